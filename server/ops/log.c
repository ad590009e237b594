#include "ops/log.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = CQR_LOG_INFO;
static atomic_int log_format = CQR_LOG_TEXT;
static atomic_int log_journal; /* 1: "<N>" priority prefixes */

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"text", "json"};
/* Syslog priorities of the levels (LOG_DEBUG, LOG_INFO, LOG_WARNING,
 * LOG_ERR). */
static const int level_priority[] = {7, 6, 4, 3};

/* Room for one message, and for a whole line (the JSON form escapes). */
#define LOG_MSG_MAX 1024
#define LOG_LINE_MAX 2048
/* key=value pairs turned into JSON members per line; more stay in msg. */
#define LOG_PAIRS_MAX 64

void cqr_log_set_format(cqr_log_format_t format)
{
    atomic_store_explicit(&log_format, (int)format, memory_order_relaxed);
}

const char *cqr_log_format_name(cqr_log_format_t format)
{
    return (unsigned)format <= CQR_LOG_JSON ? format_names[format] : "?";
}

int cqr_log_format_parse(const char *name, cqr_log_format_t *out)
{
    for (int i = 0; i <= CQR_LOG_JSON; i++) {
        if (strcmp(name, format_names[i]) == 0) {
            *out = (cqr_log_format_t)i;
            return 0;
        }
    }
    return -1;
}

int cqr_log_detect_journal(void)
{
    /* systemd sets JOURNAL_STREAM=DEV:INODE of the stream it connected;
     * stderr may since have been redirected elsewhere, so compare. */
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    unsigned long long dev, ino;
    char end;
    int on = js != NULL && fstat(STDERR_FILENO, &st) == 0 &&
             sscanf(js, "%llu:%llu%c", &dev, &ino, &end) == 2 &&
             (unsigned long long)st.st_dev == dev &&
             (unsigned long long)st.st_ino == ino;
    atomic_store_explicit(&log_journal, on, memory_order_relaxed);
    return on;
}

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

/* 1 if s is a JSON number (RFC 8259: -?int frac? exp?), so it can go
 * into the line as it is. */
static int json_number(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (isdigit((unsigned char)*s))
        while (isdigit((unsigned char)*s))
            s++;
    else
        return 0;
    if (*s == '.') {
        if (!isdigit((unsigned char)*++s))
            return 0;
        while (isdigit((unsigned char)*s))
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!isdigit((unsigned char)*s))
            return 0;
        while (isdigit((unsigned char)*s))
            s++;
    }
    return *s == '\0';
}

/* Length of the key of a key=value token at p (letters, digits, '_',
 * '.', '-' before '='), or 0 if p does not start one. */
static size_t pair_key_len(const char *p)
{
    size_t n = 0;
    while (isalnum((unsigned char)p[n]) || p[n] == '_' || p[n] == '.' ||
           p[n] == '-')
        n++;
    return n > 0 && p[n] == '=' ? n : 0;
}

/* Adds a member for a pair of the message, renaming a key that would
 * hide a fixed one ("time" becomes "_time"); a value that is a JSON
 * number goes in as one. */
static int json_add(cJSON *o, const char *key, const char *val)
{
    char k[80];
    int fixed = strcmp(key, "time") == 0 || strcmp(key, "level") == 0 ||
                strcmp(key, "module") == 0 || strcmp(key, "msg") == 0;
    snprintf(k, sizeof k, "%s%s", fixed ? "_" : "", key);
    cJSON *v = json_number(val) ? cJSON_CreateRaw(val)
                                : cJSON_CreateString(val);
    if (v == NULL || !cJSON_AddItemToObject(o, k, v)) {
        cJSON_Delete(v);
        return -1;
    }
    return 0;
}

/* The JSON form of one line into out[0..cap); 0, or -1 (no memory, too
 * long) when the caller should write the text form instead. */
static int json_line(char *out, size_t cap, const char *stamp,
                     const char *level, const char *module, const char *m)
{
    char msg[LOG_MSG_MAX]; /* taken apart in place */
    snprintf(msg, sizeof msg, "%s", m);
    char *key[LOG_PAIRS_MAX], *val[LOG_PAIRS_MAX];
    size_t npairs = 0;
    /* The words before the first pair are the message; so are words
     * between pairs that are not pairs themselves. */
    char text[LOG_MSG_MAX];
    size_t tlen = 0;
    int stray = 0;
    char *p = msg;
    while (*p != '\0') {
        while (*p == ' ')
            p++;
        if (*p == '\0')
            break;
        size_t kl = pair_key_len(p);
        if (kl > 0 && npairs < LOG_PAIRS_MAX) {
            key[npairs] = p;
            p[kl] = '\0';
            p += kl + 1;
            if (*p == '"') { /* a quoted value runs to its closing quote */
                val[npairs] = ++p;
                p += strcspn(p, "\"");
            } else {
                val[npairs] = p;
                p += strcspn(p, " ");
                /* "dir=/x; starting": the ';' ends the sentence, not
                 * the value. */
                if (p - val[npairs] > 1 && strchr(";:,", p[-1]) != NULL)
                    p[-1] = '\0';
            }
            if (*p != '\0')
                *p++ = '\0';
            npairs++;
            continue;
        }
        size_t wl = strcspn(p, " ");
        stray |= npairs > 0; /* words after a pair: keep the sentence */
        if (tlen + wl + 2 < sizeof text) {
            if (tlen > 0)
                text[tlen++] = ' ';
            memcpy(text + tlen, p, wl);
            tlen += wl;
        }
        p += wl;
    }
    text[tlen] = '\0';

    cJSON *o = cJSON_CreateObject();
    int rc = o != NULL && cJSON_AddStringToObject(o, "time", stamp) &&
                     cJSON_AddStringToObject(o, "level", level) &&
                     cJSON_AddStringToObject(o, "module", module) &&
                     cJSON_AddStringToObject(o, "msg", stray ? m : text)
                 ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < npairs; i++)
        rc = json_add(o, key[i], val[i]);
    if (rc == 0 && !cJSON_PrintPreallocated(o, out, (int)cap, 0))
        rc = -1;
    cJSON_Delete(o);
    return rc;
}

/* Appends s to line[*len..cap), cut at cap. */
static void append(char *line, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (n > cap - *len)
        n = cap - *len;
    memcpy(line + *len, s, n);
    *len += n;
}

void cqr_log(cqr_log_level_t level, const char *module, const char *fmt, ...)
{
    if (!cqr_log_enabled(level))
        return;

    char msg[LOG_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg[0] = '\0';

    char stamp[80]; /* room for any int the fields could hold */
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);
    const char *lv = cqr_log_level_name(level);

    /* One byte stays free for the newline. */
    char line[LOG_LINE_MAX];
    const size_t cap = sizeof line - 1;
    size_t len = 0;
    if (atomic_load_explicit(&log_journal, memory_order_relaxed)) {
        char prio[8] = "<0>";
        prio[1] = (char)('0' + level_priority[(unsigned)level & 3]);
        append(line, cap, &len, prio);
    }
    if (atomic_load_explicit(&log_format, memory_order_relaxed) ==
            CQR_LOG_JSON &&
        json_line(line + len, cap - len, stamp, lv, module, msg) == 0) {
        len += strlen(line + len);
    } else {
        const char *parts[] = {stamp, " ", lv, " ", module, ": ", msg};
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
            append(line, cap, &len, parts[i]);
    }
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
