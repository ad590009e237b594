/* log.h -- one line per event on stderr.
 *
 * Format: `2026-11-26T19:40:01.123Z info conn: accepted peer=127.0.0.1:5555`
 * (UTC time with milliseconds, level, module, message of key=value pairs).
 * With CQR_LOG_JSON (--log-format json), one JSON object per line for log
 * shippers, written with cJSON: {"time": ..., "level": ..., "module": ...,
 * "msg": the words before the first key=value (the whole message when
 * words follow a pair, as in "no checkpoint in dir=X; starting ..."),
 * then one member per pair; a value that is a JSON number is written as a
 * number, and an unquoted value loses a trailing ';', ':' or ','}. When stderr is
 * the systemd journal (cqr_log_detect_journal), every line starts with
 * its syslog priority, "<3>" error, "<4>" warn, "<6>" info, "<7>" debug
 * (sd-daemon(3)), which journald stores as the entry's priority.
 *
 * Threading: cqr_log may be called from any thread; each line reaches
 * stderr in one write(2), so lines of different threads never interleave.
 * cqr_log_set_level, cqr_log_set_format and cqr_log_detect_journal should
 * be called once at start-up, before other threads log (the settings are
 * atomic, so a later change is safe but not ordered with concurrent
 * lines).
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

typedef enum cqr_log_format {
    CQR_LOG_TEXT = 0, /* time level module: message key=value ... */
    CQR_LOG_JSON = 1  /* one JSON object per line */
} cqr_log_format_t;

/* The line format; the default is CQR_LOG_TEXT. */
void cqr_log_set_format(cqr_log_format_t format);
/* "text", "json" and back; parse returns 0, or -1 for an unknown name
 * (and leaves *out alone). */
const char *cqr_log_format_name(cqr_log_format_t format);
int cqr_log_format_parse(const char *name, cqr_log_format_t *out);

/* Turns the syslog priority prefixes on when $JOURNAL_STREAM names the
 * file stderr is (device:inode, as systemd sets it for a service whose
 * stderr goes to the journal), off otherwise. Returns 1 if on. */
int cqr_log_detect_journal(void);

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
