/* check_main.h -- what a suite gives the shared runner (check_main.c).
 * Every check suite links check_main.c (cqr_add_check_test does it). */
#ifndef CQR_TEST_CHECK_MAIN_H
#define CQR_TEST_CHECK_MAIN_H

#include <check.h>

/* Builds the suite to run. Called once, before any test runs. */
Suite *cqr_test_suite(void);

/* Optional (weak default returns -1): a role of the test binary other
 * than running the suite, chosen from argv; returns its exit status, or
 * -1 to run the suite. */
int cqr_test_child(int argc, char **argv);

#endif
