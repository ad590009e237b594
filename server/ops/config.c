#include "ops/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/err.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)
#define PiB (UINT64_C(1) << 50)

#define OFF(field) offsetof(cqr_config_t, field)

/* The one table. Bounds keep values inside what the wire can carry
 * (HelloReply sends max_frame_bytes and max_batch as uint32) and what the
 * server can reasonably hold; defaults are text so they go through the
 * same parser as user input. */
static const cqr_config_option_t options[] = {
    {"listen", CQR_CT_ADDR, 0, 0, "127.0.0.1:7070", OFF(listen),
     "address to listen on, HOST:PORT or [V6]:PORT; port 0 = any free port"},
    {"threads", CQR_CT_U32, 1, 256, "2", OFF(threads),
     "I/O threads, each with its own event loop"},
    {"max-frame-bytes", CQR_CT_SIZE, 1 * KiB, 1 * GiB, "64M",
     OFF(max_frame_bytes),
     "largest request frame accepted and reply built (bytes)"},
    {"max-batch", CQR_CT_U64, 1, UINT64_C(1) << 30, "1048576", OFF(max_batch),
     "most IDs in one Lookup or Push"},
    {"max-tables", CQR_CT_U32, 1, 65536, "1024", OFF(max_tables),
     "most tables at once"},
    {"max-connections", CQR_CT_U32, 1, 1048576, "1024", OFF(max_connections),
     "most client connections at once; more get LIMIT_EXCEEDED"},
    {"max-pending-bytes", CQR_CT_SIZE, 64 * KiB, 1 * TiB, "64M",
     OFF(max_pending_bytes),
     "unsent reply bytes per connection before it stops being read; "
     "4x (and at least one maximal reply more) closes it"},
    {"max-table-memory", CQR_CT_SIZE, 1 * MiB, 1 * PiB, "16G",
     OFF(max_table_memory),
     "memory all tables may hold, summed: codebooks at creation plus "
     "full-table rows and known-ID maps as pushes grow them (bytes)"},
    {"max-dim", CQR_CT_U32, 1, 4096, "4096", OFF(max_dim),
     "largest dim a CreateTable may ask for"},
    {"max-rows", CQR_CT_U32, 1, UINT32_C(1) << 24, "16777216",
     OFF(max_rows),
     "most rows per codebook a CreateTable may ask for (hash, ce, cqr)"},
    {"idle-timeout", CQR_CT_U32, 0, 7 * 86400, "300", OFF(idle_timeout),
     "seconds a connection may stay silent (nothing received, no reply "
     "written) before it is closed; 0 = never"},
    {"frame-timeout", CQR_CT_U32, 0, 3600, "60", OFF(frame_timeout),
     "seconds a request frame may take from its first byte to its last; "
     "0 = no limit"},
    {"auth-token-file", CQR_CT_PATH, 0,
     sizeof(((cqr_config_t *)0)->auth_token_file), "",
     OFF(auth_token_file),
     "require clients to send the token in this file (not readable by "
     "others) in Hello"},
    {"admin-token-file", CQR_CT_PATH, 0,
     sizeof(((cqr_config_t *)0)->admin_token_file), "",
     OFF(admin_token_file),
     "require the token in this file for drop, cluster and checkpoint"},
    {"engine-threads", CQR_CT_U32, 0, 256, "1", OFF(engine_threads),
     "helper threads that share the work of one large lookup or push with "
     "the I/O thread serving it (split by IDs, chunks or rows; results "
     "are identical); 0 = none"},
    {"cluster-threads", CQR_CT_U32, 1, 256, "1", OFF(cluster_threads),
     "threads of one cluster phase (k-means and assignment)"},
    {"cluster-workers", CQR_CT_U32, 1, 64, "2", OFF(cluster_workers),
     "cluster phases that run at once; others wait queued"},
    {"log-level", CQR_CT_LEVEL, 0, 0, "info", OFF(log_level),
     "debug, info, warn or error"},
    {"log-format", CQR_CT_LOGFMT, 0, 0, "text", OFF(log_format),
     "log line format: text (time level module: message key=value), or "
     "json (one object per line, for log shippers)"},
    {"metrics-listen", CQR_CT_ADDR_OPT, 0, 0, "off", OFF(metrics),
     "HTTP address of /metrics (Prometheus), /healthz and /readyz: "
     "HOST:PORT, or PORT alone for loopback; port 0 = any free port"},
    {"data-dir", CQR_CT_PATH, 0, sizeof(((cqr_config_t *)0)->data_dir), "",
     OFF(data_dir),
     "directory of the checkpoint database (RocksDB); enables "
     "checkpoints and the restore at start"},
    {"checkpoint-interval", CQR_CT_U32, 0, 7 * 86400, "300",
     OFF(checkpoint_interval),
     "seconds between periodic checkpoints (with --data-dir); 0 = none"},
    {"checkpoint-keep", CQR_CT_U32, 0, 1000000, "3", OFF(checkpoint_keep),
     "checkpoint generations kept (older ones are deleted); 0 = all"},
    {"restore-generation", CQR_CT_U64, 0, UINT64_MAX, "0",
     OFF(restore_generation),
     "generation to restore at start; 0 = the newest that loads (damaged "
     "ones are skipped)"},
    {"checkpoint-on-phase", CQR_CT_BOOL, 0, 0, "on",
     OFF(checkpoint_on_phase),
     "checkpoint before and after every cluster phase (on|off)"},
    {"checkpoint-on-exit", CQR_CT_BOOL, 0, 0, "on", OFF(checkpoint_on_exit),
     "checkpoint at SIGTERM/SIGINT after the last request (on|off)"},
    {"allow-empty-restore", CQR_CT_BOOL, 0, 0, "off",
     OFF(allow_empty_restore),
     "start with no tables when checkpoints exist but none loads, "
     "instead of refusing to start (on|off)"},
    {"accept-older-generation", CQR_CT_BOOL, 0, 0, "off",
     OFF(accept_older_generation),
     "start from the newest generation that loads when the last "
     "acknowledged one is missing, instead of refusing to start (on|off)"},
    {"serve", CQR_CT_PATH, 0, sizeof(((cqr_config_t *)0)->serve), "",
     OFF(serve),
     "serve these exports (FILE,FILE...; `cqrps export`) read-only: "
     "lookups only, writes answer READ_ONLY; reloaded when they change"},
    {"serve-dir", CQR_CT_PATH, 0, sizeof(((cqr_config_t *)0)->serve_dir),
     "", OFF(serve_dir),
     "serve the newest export of each table in DIR, with its deltas "
     "applied, read-only; new exports and deltas are picked up"},
    {"serve-poll-ms", CQR_CT_U32, 0, 3600000, "1000", OFF(serve_poll_ms),
     "how often --serve and --serve-dir look for changed exports (also at "
     "SIGHUP); 0 = at SIGHUP only"},
    {"config", CQR_CT_PATH, 0, sizeof(((cqr_config_t *)0)->config_path),
     NULL, OFF(config_path),
     "read settings from FILE (name = value lines); flags override it"},
    {"print-config", CQR_CT_FLAG, 0, 0, NULL, OFF(print_config),
     "print the effective config in config-file syntax and exit"},
    {"version", CQR_CT_FLAG, 0, 0, NULL, OFF(show_version),
     "print the version and exit"},
    {"help", CQR_CT_FLAG, 0, 0, NULL, OFF(show_help),
     "print this help and exit"},
};

#define NOPTIONS (sizeof options / sizeof options[0])

const cqr_config_option_t *cqr_config_options(size_t *n)
{
    *n = NOPTIONS;
    return options;
}

static const cqr_config_option_t *find_option(const char *name)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
    return NULL;
}

/* Parses a non-negative decimal integer with an optional binary suffix
 * (only when `suffixes`). Rejects signs, blanks, trailing junk and
 * overflow, which strtoull alone would let through ("-1" wraps). */
static int parse_u64(const char *s, int suffixes, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    uint64_t mul = 1;
    if (*end != '\0') {
        if (!suffixes)
            return -1;
        switch (tolower((unsigned char)*end)) {
        case 'k': mul = KiB; break;
        case 'm': mul = MiB; break;
        case 'g': mul = GiB; break;
        case 't': mul = TiB; break;
        default: return -1;
        }
        end++;
        /* Accept "M", "MB", "MiB" (all binary: sizes here are memory). */
        if (strcasecmp(end, "ib") == 0 || strcasecmp(end, "b") == 0)
            end += strlen(end);
        if (*end != '\0')
            return -1;
    }
    if (v > UINT64_MAX / mul)
        return -1;
    *out = (uint64_t)v * mul;
    return 0;
}

/* HOST:PORT with the port last; a v6 host must be bracketed. `name` is
 * the option, for messages. Writes host[0..hostcap) and *port only on
 * success. */
static int split_addr(const char *name, const char *s, char *hostout,
                      size_t hostcap, uint16_t *portout, char *err,
                      size_t errlen)
{
    const char *colon;
    const char *host = s;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(err, errlen, "--%s: '%s' is not [V6HOST]:PORT", name,
                     s);
            return CQR_EINVAL;
        }
        host = s + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            snprintf(err, errlen, "--%s: '%s' is not HOST:PORT", name, s);
            return CQR_EINVAL;
        }
        hostlen = (size_t)(colon - s);
        if (memchr(s, ':', hostlen) != NULL) {
            snprintf(err, errlen,
                     "--%s: '%s': put an IPv6 host in brackets, "
                     "[::1]:7070", name, s);
            return CQR_EINVAL;
        }
    }
    if (hostlen == 0 || hostlen >= hostcap) {
        snprintf(err, errlen, "--%s: '%s' needs a host (e.g. 127.0.0.1, "
                 "or 0.0.0.0 for every interface)", name, s);
        return CQR_EINVAL;
    }
    uint64_t port;
    if (parse_u64(colon + 1, 0, &port) != 0 || port > 65535) {
        snprintf(err, errlen, "--%s: '%s' needs a port 0..65535", name, s);
        return CQR_EINVAL;
    }
    memcpy(hostout, host, hostlen);
    hostout[hostlen] = '\0';
    *portout = (uint16_t)port;
    return 0;
}

static int parse_addr(const char *s, cqr_config_t *cfg, char *err,
                      size_t errlen)
{
    if (strlen(s) >= sizeof cfg->listen) {
        snprintf(err, errlen, "--listen: address too long");
        return CQR_EINVAL;
    }
    char host[sizeof cfg->listen_host];
    uint16_t port;
    int rc = split_addr("listen", s, host, sizeof host, &port, err, errlen);
    if (rc != 0)
        return rc;
    memcpy(cfg->listen_host, host, sizeof host);
    cfg->listen_port = port;
    snprintf(cfg->listen, sizeof cfg->listen, "%s", s);
    return 0;
}

/* "off" (or ""), a bare PORT (on 127.0.0.1: the safe default for an
 * endpoint without authentication), or HOST:PORT. */
static int parse_addr_opt(const char *name, const char *s, cqr_addr_t *a,
                          char *err, size_t errlen)
{
    if (s[0] == '\0' || strcasecmp(s, "off") == 0) {
        memset(a, 0, sizeof *a);
        return 0;
    }
    cqr_addr_t n;
    memset(&n, 0, sizeof n);
    uint64_t port;
    if (parse_u64(s, 0, &port) == 0) {
        if (port > 65535) {
            snprintf(err, errlen, "--%s: port %s is not 0..65535", name, s);
            return CQR_EINVAL;
        }
        snprintf(n.host, sizeof n.host, "127.0.0.1");
        n.port = (uint16_t)port;
        snprintf(n.text, sizeof n.text, "127.0.0.1:%u", n.port);
        *a = n;
        return 0;
    }
    if (strlen(s) >= sizeof n.text) {
        snprintf(err, errlen, "--%s: address too long", name);
        return CQR_EINVAL;
    }
    int rc = split_addr(name, s, n.host, sizeof n.host, &n.port, err,
                        errlen);
    if (rc != 0)
        return rc;
    snprintf(n.text, sizeof n.text, "%s", s);
    *a = n;
    return 0;
}

int cqr_config_set(cqr_config_t *cfg, const char *name, const char *value,
                   char *err, size_t errlen)
{
    const cqr_config_option_t *o = find_option(name);
    if (o == NULL) {
        snprintf(err, errlen, "unknown option '--%s'", name);
        return CQR_EINVAL;
    }
    char *field = (char *)cfg + o->offset;
    uint64_t v;

    switch (o->type) {
    case CQR_CT_ADDR:
        return parse_addr(value, cfg, err, errlen);
    case CQR_CT_ADDR_OPT:
        return parse_addr_opt(name, value, (cqr_addr_t *)(void *)field, err,
                              errlen);
    case CQR_CT_PATH:
        if (strlen(value) >= o->max) {
            snprintf(err, errlen, "--%s: path longer than %" PRIu64
                     " bytes", name, o->max - 1);
            return CQR_EINVAL;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case CQR_CT_LEVEL: {
        cqr_log_level_t lv;
        if (cqr_log_level_parse(value, &lv) != 0) {
            snprintf(err, errlen, "--%s: '%s' is not one of debug, info, "
                     "warn, error", name, value);
            return CQR_EINVAL;
        }
        *(cqr_log_level_t *)(void *)field = lv;
        return 0;
    }
    case CQR_CT_LOGFMT: {
        cqr_log_format_t lf;
        if (cqr_log_format_parse(value, &lf) != 0) {
            snprintf(err, errlen, "--%s: '%s' is not one of text, json",
                     name, value);
            return CQR_EINVAL;
        }
        *(cqr_log_format_t *)(void *)field = lf;
        return 0;
    }
    case CQR_CT_BOOL: {
        static const char *const yes[] = {"on", "true", "yes", "1"};
        static const char *const no[] = {"off", "false", "no", "0"};
        for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
            if (strcasecmp(value, yes[i]) == 0) {
                *(int *)(void *)field = 1;
                return 0;
            }
            if (strcasecmp(value, no[i]) == 0) {
                *(int *)(void *)field = 0;
                return 0;
            }
        }
        snprintf(err, errlen, "--%s: '%s' is not on or off", name, value);
        return CQR_EINVAL;
    }
    case CQR_CT_FLAG:
        if (value != NULL && value[0] != '\0') {
            snprintf(err, errlen, "--%s takes no value", name);
            return CQR_EINVAL;
        }
        *(int *)(void *)field = 1;
        return 0;
    case CQR_CT_U32:
    case CQR_CT_U64:
    case CQR_CT_SIZE:
        if (parse_u64(value, o->type == CQR_CT_SIZE, &v) != 0) {
            snprintf(err, errlen, "--%s: '%s' is not a %s", name, value,
                     o->type == CQR_CT_SIZE
                         ? "size (a number with an optional K, M, G or T)"
                         : "non-negative integer");
            return CQR_EINVAL;
        }
        if (v < o->min || v > o->max) {
            snprintf(err, errlen, "--%s: %s is %s the %s %" PRIu64, name,
                     value, v < o->min ? "below" : "above",
                     v < o->min ? "minimum" : "maximum",
                     v < o->min ? o->min : o->max);
            return CQR_EINVAL;
        }
        if (o->type == CQR_CT_U32)
            *(uint32_t *)(void *)field = (uint32_t)v;
        else
            *(uint64_t *)(void *)field = v;
        return 0;
    }
    assert(!"unknown option type");
    return CQR_EINVAL;
}

void cqr_config_defaults(cqr_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char err[256];
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (options[i].def == NULL)
            continue;
        int rc = cqr_config_set(cfg, options[i].name, options[i].def, err,
                                sizeof err);
        assert(rc == 0 && "built-in default out of its own bounds");
        (void)rc;
    }
}

/* One getopt_long pass over argv. With apply == 0 it only checks the
 * syntax and finds --config (into *config); with apply == 1 it sets every
 * flag but --config. Two passes, so the file can be read between them
 * and the flags win wherever --config stands. */
static int scan_args(cqr_config_t *cfg, int argc, char **argv,
                     const struct option *longopts, int apply,
                     const char **config, char *err, size_t errlen)
{
    /* optind = 0 makes glibc re-initialise, so this can run more than once
     * per process (tests do). "+" stops at the first non-option instead of
     * permuting argv; ":" reports a missing value as ':'. */
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "+:hV", longopts, NULL)) != -1) {
        if (ch == 'h') {
            cfg->show_help = 1;
            continue;
        }
        if (ch == 'V') {
            cfg->show_version = 1;
            continue;
        }
        if (ch == ':') {
            const char *nm = optopt >= 256 && optopt < 256 + (int)NOPTIONS
                                 ? options[optopt - 256].name : "?";
            snprintf(err, errlen, "option '--%s' needs a value", nm);
            return CQR_EINVAL;
        }
        if (ch == '?') {
            if (optopt >= 256 && optopt < 256 + (int)NOPTIONS)
                snprintf(err, errlen, "option '--%s' takes no value",
                         options[optopt - 256].name);
            else if (optopt != 0)
                snprintf(err, errlen, "unknown option '-%c'", optopt);
            else
                snprintf(err, errlen, "unknown option '%s'",
                         argv[optind - 1]);
            return CQR_EINVAL;
        }
        assert(ch >= 256 && ch < 256 + (int)NOPTIONS);
        const cqr_config_option_t *o = &options[ch - 256];
        if (strcmp(o->name, "config") == 0) {
            if (!apply && *config != NULL) {
                snprintf(err, errlen, "--config given twice");
                return CQR_EINVAL;
            }
            *config = optarg;
            continue;
        }
        if (!apply)
            continue;
        int rc = cqr_config_set(cfg, o->name,
                                o->type == CQR_CT_FLAG ? NULL : optarg, err,
                                errlen);
        if (rc != 0)
            return rc;
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument '%s'", argv[optind]);
        return CQR_EINVAL;
    }
    return 0;
}

int cqr_config_parse_args(cqr_config_t *cfg, int argc, char **argv,
                          char *err, size_t errlen)
{
    struct option longopts[NOPTIONS + 1];
    for (size_t i = 0; i < NOPTIONS; i++) {
        longopts[i].name = options[i].name;
        longopts[i].has_arg = options[i].type == CQR_CT_FLAG
                                  ? no_argument : required_argument;
        longopts[i].flag = NULL;
        longopts[i].val = 256 + (int)i;
    }
    memset(&longopts[NOPTIONS], 0, sizeof longopts[NOPTIONS]);

    const char *config = NULL;
    int rc = scan_args(cfg, argc, argv, longopts, 0, &config, err, errlen);
    if (rc != 0)
        return rc;
    if (config != NULL) {
        rc = cqr_config_set(cfg, "config", config, err, errlen);
        if (rc == 0)
            rc = cqr_config_load_file(cfg, config, err, errlen);
        if (rc != 0)
            return rc;
    }
    return scan_args(cfg, argc, argv, longopts, 1, &config, err, errlen);
}

/* Switches that make no sense in a file. */
static int cmdline_only(const cqr_config_option_t *o)
{
    return o->type == CQR_CT_FLAG || strcmp(o->name, "config") == 0;
}

/* Trims blanks at both ends of s[0..*len) in place; returns the start. */
static char *trim(char *s, size_t *len)
{
    while (*len > 0 && isspace((unsigned char)s[0])) {
        s++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)s[*len - 1]))
        (*len)--;
    s[*len] = '\0';
    return s;
}

/* Parses one line (NUL-terminated, no newline) of a config file.
 * seen[i] holds the line that set option i, 0 if none yet. */
static int file_line(cqr_config_t *cfg, char *line, size_t lineno,
                     size_t *seen, char *err, size_t errlen)
{
    size_t len = strlen(line);
    char *s = trim(line, &len);
    if (len == 0 || s[0] == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (eq == NULL) {
        snprintf(err, errlen, "expected 'name = value', got '%.60s'", s);
        return CQR_EINVAL;
    }
    size_t nlen = (size_t)(eq - s);
    char *name = trim(s, &nlen);
    size_t vlen = strlen(eq + 1);
    char *value = trim(eq + 1, &vlen);
    if (value[0] == '"') {
        char *close = strchr(value + 1, '"');
        if (close == NULL) {
            snprintf(err, errlen, "%s: missing closing '\"'", name);
            return CQR_EINVAL;
        }
        char *rest = close + 1;
        size_t rlen = strlen(rest);
        rest = trim(rest, &rlen);
        if (rlen > 0 && rest[0] != '#') {
            snprintf(err, errlen, "%s: unexpected text after the quoted "
                     "value", name);
            return CQR_EINVAL;
        }
        *close = '\0';
        value++;
    } else {
        /* A '#' after a blank starts a comment. */
        for (char *p = value + 1; *p != '\0'; p++)
            if (*p == '#' && isspace((unsigned char)p[-1])) {
                *p = '\0';
                vlen = (size_t)(p - value);
                value = trim(value, &vlen);
                break;
            }
    }
    if (nlen == 0) {
        snprintf(err, errlen, "missing option name before '='");
        return CQR_EINVAL;
    }
    if (strncmp(name, "--", 2) == 0)
        name += 2;
    const cqr_config_option_t *o = find_option(name);
    if (o == NULL) {
        /* A common slip: underscores for dashes. */
        char alt[64];
        snprintf(alt, sizeof alt, "%s", name);
        for (char *p = alt; *p; p++)
            if (*p == '_')
                *p = '-';
        const cqr_config_option_t *a = find_option(alt);
        if (a != NULL && !cmdline_only(a))
            snprintf(err, errlen, "unknown option '%s' (did you mean '%s'?)",
                     name, alt);
        else
            snprintf(err, errlen, "unknown option '%.64s' (see "
                     "cqrps-server --help)", name);
        return CQR_EINVAL;
    }
    if (cmdline_only(o)) {
        snprintf(err, errlen, "'%s' can only be given on the command line",
                 name);
        return CQR_EINVAL;
    }
    size_t i = (size_t)(o - options);
    if (seen[i] != 0) {
        snprintf(err, errlen, "'%s' is set twice (first on line %zu)", name,
                 seen[i]);
        return CQR_EINVAL;
    }
    if (value[0] == '\0' && o->type != CQR_CT_ADDR_OPT &&
        o->type != CQR_CT_PATH) {
        snprintf(err, errlen, "'%s' needs a value", name);
        return CQR_EINVAL;
    }
    int rc = cqr_config_set(cfg, name, value, err, errlen);
    if (rc == 0)
        seen[i] = lineno;
    return rc;
}

#define CONFIG_LINE_MAX 4096

int cqr_config_load_file(cqr_config_t *cfg, const char *path, char *err,
                         size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "--config: cannot read '%s': %s", path,
                 strerror(errno));
        return CQR_EIO;
    }
    size_t seen[NOPTIONS];
    memset(seen, 0, sizeof seen);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    size_t lineno = 0;
    int rc = 0;
    char why[400];
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if ((size_t)n > CONFIG_LINE_MAX) {
            snprintf(err, errlen, "%s:%zu: line longer than %d bytes", path,
                     lineno, CONFIG_LINE_MAX);
            rc = CQR_EINVAL;
            break;
        }
        if (memchr(line, '\0', (size_t)n) != NULL) {
            snprintf(err, errlen, "%s:%zu: NUL byte in the line (not a "
                     "text file?)", path, lineno);
            rc = CQR_EINVAL;
            break;
        }
        why[0] = '\0';
        rc = file_line(cfg, line, lineno, seen, why, sizeof why);
        if (rc != 0) {
            snprintf(err, errlen, "%s:%zu: %s", path, lineno, why);
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "--config: error reading '%s': %s", path,
                 strerror(errno));
        rc = CQR_EIO;
    }
    free(line);
    fclose(f);
    return rc;
}

void cqr_config_usage(FILE *f, const char *prog)
{
    fprintf(f,
            "Usage: %s [OPTIONS]\n"
            "The cqrps embedding parameter server.\n\n"
            "Options:\n", prog);
    for (size_t i = 0; i < NOPTIONS; i++) {
        const cqr_config_option_t *o = &options[i];
        const char *arg = "";
        switch (o->type) {
        case CQR_CT_ADDR: arg = " HOST:PORT"; break;
        case CQR_CT_U32:
        case CQR_CT_U64: arg = " N"; break;
        case CQR_CT_SIZE: arg = " BYTES"; break;
        case CQR_CT_LEVEL: arg = " LEVEL"; break;
        case CQR_CT_LOGFMT: arg = " text|json"; break;
        case CQR_CT_ADDR_OPT: arg = " [HOST:]PORT"; break;
        case CQR_CT_PATH: arg = strcmp(o->name, "config") == 0
                                    ? " FILE" : " PATH"; break;
        case CQR_CT_BOOL: arg = " on|off"; break;
        case CQR_CT_FLAG: break;
        }
        char left[64];
        snprintf(left, sizeof left, "--%s%s", o->name, arg);
        fprintf(f, "  %-28s %s", left, o->help);
        if (o->def != NULL)
            fprintf(f, " [default %s", o->def[0] ? o->def : "none");
        if (o->type == CQR_CT_U32 || o->type == CQR_CT_U64 ||
            o->type == CQR_CT_SIZE)
            fprintf(f, ", %" PRIu64 "..%" PRIu64, o->min, o->max);
        fprintf(f, "%s\n", o->def != NULL ? "]" : "");
    }
    fprintf(f, "\nSizes take K, M, G or T suffixes (binary). "
               "Every option can also be set in the\n"
               "--config file as 'name = value'; flags override the file. "
               "Logs go to stderr;\n"
               "the ready line 'cqrps-server listening on HOST:PORT' goes "
               "to stdout (then\n"
               "'cqrps-server metrics on HOST:PORT' with --metrics-listen).\n");
}

/* The value of option o in cfg as text; -1 for switches (no value). */
static int format_value(const cqr_config_t *cfg, const cqr_config_option_t *o,
                        char *val, size_t len)
{
    const char *field = (const char *)cfg + o->offset;
    switch (o->type) {
    case CQR_CT_FLAG:
        return -1;
    case CQR_CT_ADDR:
        snprintf(val, len, "%s", cfg->listen);
        break;
    case CQR_CT_ADDR_OPT: {
        const cqr_addr_t *a = (const cqr_addr_t *)(const void *)field;
        snprintf(val, len, "%s", a->text[0] ? a->text : "off");
        break;
    }
    case CQR_CT_PATH:
        snprintf(val, len, "%s", field);
        break;
    case CQR_CT_BOOL:
        snprintf(val, len, "%s",
                 *(const int *)(const void *)field ? "on" : "off");
        break;
    case CQR_CT_LEVEL:
        snprintf(val, len, "%s",
                 cqr_log_level_name(
                     *(const cqr_log_level_t *)(const void *)field));
        break;
    case CQR_CT_LOGFMT:
        snprintf(val, len, "%s",
                 cqr_log_format_name(
                     *(const cqr_log_format_t *)(const void *)field));
        break;
    case CQR_CT_U32:
        snprintf(val, len, "%" PRIu32,
                 *(const uint32_t *)(const void *)field);
        break;
    case CQR_CT_U64:
    case CQR_CT_SIZE:
        snprintf(val, len, "%" PRIu64,
                 *(const uint64_t *)(const void *)field);
        break;
    }
    return 0;
}

void cqr_config_write(const cqr_config_t *cfg, FILE *f)
{
    fprintf(f, "# cqrps-server %s effective config\n", CQR_SERVER_VERSION);
    for (size_t i = 0; i < NOPTIONS; i++) {
        const cqr_config_option_t *o = &options[i];
        char val[4200];
        if (cmdline_only(o) || format_value(cfg, o, val, sizeof val) != 0)
            continue;
        size_t n = strlen(val);
        int quote = n == 0 || isspace((unsigned char)val[0]) ||
                    isspace((unsigned char)val[n - 1]) ||
                    strchr(val, '#') != NULL;
        fprintf(f, "%s = %s%s%s\n", o->name, quote ? "\"" : "", val,
                quote ? "\"" : "");
    }
}

size_t cqr_config_format(const cqr_config_t *cfg, char *buf, size_t len)
{
    size_t used = 0;
    for (size_t i = 0; i < NOPTIONS; i++) {
        const cqr_config_option_t *o = &options[i];
        char val[4200];
        if (format_value(cfg, o, val, sizeof val) != 0)
            continue;
        /* The file that was read is logged on its own line. */
        if (strcmp(o->name, "config") == 0)
            continue;
        int n = snprintf(buf + (used < len ? used : len),
                         used < len ? len - used : 0, "%s%s=%s",
                         used ? " " : "", o->name, val);
        if (n > 0)
            used += (size_t)n;
    }
    return used;
}
