/* log.h -- one line per event on stderr.
 *
 * Format: `2026-11-26T19:40:01.123Z info conn: accepted peer=127.0.0.1:5555`
 * (UTC time with milliseconds, level, module, message of key=value pairs).
 *
 * Threading: cqr_log may be called from any thread; each line reaches
 * stderr in one write(2), so lines of different threads never interleave.
 * cqr_log_set_level should be called once at start-up, before other
 * threads log (reads of the level are atomic, so a later change is safe
 * but not ordered with concurrent lines).
 *
 * Values that come from clients (table names, client names) must go
 * through cqr_log_clean before they are logged, so a client cannot forge
 * log lines with newlines or spaces.
 */
#ifndef CQR_LOG_H
#define CQR_LOG_H

#include <stddef.h>

typedef enum cqr_log_level {
    CQR_LOG_DEBUG = 0,
    CQR_LOG_INFO = 1,
    CQR_LOG_WARN = 2,
    CQR_LOG_ERROR = 3
} cqr_log_level_t;

/* Lines below `level` are dropped. The default is CQR_LOG_INFO. */
void cqr_log_set_level(cqr_log_level_t level);

/* 1 if a line at `level` would be written (to skip costly formatting). */
int cqr_log_enabled(cqr_log_level_t level);

/* "debug", "info", "warn", "error" and back. Parse returns 0, or -1 for an
 * unknown name (and leaves *out alone). */
const char *cqr_log_level_name(cqr_log_level_t level);
int cqr_log_level_parse(const char *name, cqr_log_level_t *out);

/* Writes one line. `module` is a short word ("conn", "rpc", "phase").
 * Lines longer than about 1 KiB are truncated, never split. */
void cqr_log(cqr_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies `src` into dst[0..dstlen) for logging: bytes outside printable
 * ASCII, spaces, '=' and '"' become '?', and an overlong value is cut with
 * "...". Returns dst. An empty or NULL src gives "-". */
char *cqr_log_clean(char *dst, size_t dstlen, const char *src);

#endif
