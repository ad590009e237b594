#include "ops/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = CQR_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void cqr_log_set_level(cqr_log_level_t level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

int cqr_log_enabled(cqr_log_level_t level)
{
    return (int)level >= atomic_load_explicit(&log_level,
                                              memory_order_relaxed);
}

const char *cqr_log_level_name(cqr_log_level_t level)
{
    if ((unsigned)level > CQR_LOG_ERROR)
        return "?";
    return level_names[level];
}

int cqr_log_level_parse(const char *name, cqr_log_level_t *out)
{
    for (int i = 0; i <= CQR_LOG_ERROR; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (cqr_log_level_t)i;
            return 0;
        }
    }
    /* Operators type "warning" as often as "warn". */
    if (strcmp(name, "warning") == 0) {
        *out = CQR_LOG_WARN;
        return 0;
    }
    return -1;
}

void cqr_log(cqr_log_level_t level, const char *module, const char *fmt, ...)
{
    if (!cqr_log_enabled(level))
        return;

    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                     cqr_log_level_name(level), module);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;

    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(line + len, sizeof line - len, fmt, ap);
    va_end(ap);
    if (n > 0)
        len += (size_t)n < sizeof line - len ? (size_t)n : sizeof line - len - 1;
    /* Room for the newline: overwrite the last byte of a truncated line. */
    if (len >= sizeof line - 1)
        len = sizeof line - 2;
    line[len++] = '\n';

    /* One write(2) per line: stderr is unbuffered and shared by threads,
     * and a single write of < PIPE_BUF bytes is atomic on pipes. */
    const char *p = line;
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, p, len);
        if (w <= 0)
            return; /* nowhere left to report it */
        p += w;
        len -= (size_t)w;
    }
}

char *cqr_log_clean(char *dst, size_t dstlen, const char *src)
{
    if (dstlen == 0)
        return dst;
    if (src == NULL || src[0] == '\0') {
        snprintf(dst, dstlen, "-");
        return dst;
    }
    size_t i = 0;
    for (; src[i] != '\0' && i + 1 < dstlen; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch > ' ' && ch < 0x7f && ch != '=' && ch != '"')
                     ? (char)ch : '?';
    }
    dst[i] = '\0';
    if (src[i] != '\0' && dstlen >= 4)
        memcpy(dst + dstlen - 4, "...", 4);
    return dst;
}
