/* check_main.c -- the one check runner of every suite.
 *
 * A suite file defines cqr_test_suite(), which builds its Suite (and may
 * set up process-wide state first, e.g. OpenBLAS threads); this main runs
 * it and exits 0 only if every test passed. A suite that needs to run its
 * own binary as a helper process (a crash child) also defines
 * cqr_test_child(), which gets argv first: it returns -1 to go on with the
 * suite, or the exit status of the child role. SIGPIPE is ignored, since
 * suites talk to servers they may have killed.
 */
#include "check_main.h"

#include <signal.h>
#include <stdlib.h>

__attribute__((weak)) int cqr_test_child(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return -1;
}

int main(int argc, char **argv)
{
    int child = cqr_test_child(argc, argv);
    if (child >= 0)
        return child;
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(cqr_test_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
