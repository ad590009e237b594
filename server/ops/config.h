/* config.h -- the server's settings: one option table, flags, defaults.
 *
 * Every setting is one row of a single table (name, type, bounds, default,
 * help). Command-line flags (`--name VALUE`), the defaults and the config
 * file (`--config FILE`, `name = value` lines) all go through
 * cqr_config_set, so a value means the same thing wherever it comes from
 * and the bounds are checked in one place. Precedence: defaults, then the
 * file, then the flags (wherever --config stands on the command line).
 *
 * Config file syntax: one `name = value` per line, the name being the
 * flag's name without "--"; blank lines and lines whose first non-blank
 * character is '#' are ignored, and so is the rest of a line after a '#'
 * that follows a blank; a value may be put in double quotes (to keep a
 * '#' or blanks at its ends). Each name may appear once. Switches that
 * only make sense on a command line (help, version, print-config, config)
 * are refused. Errors name the file and line: "cqrps.conf:7: unknown
 * option 'thread' ...".
 *
 * Sizes accept binary suffixes: 64M, 64MiB, 16G, 512k (case-insensitive;
 * K = 1024). Counts are plain decimal integers.
 *
 * Errors: functions return 0 or CQR_EINVAL and write a one-line reason
 * ("--threads: 0 is below the minimum 1") to err[0..errlen). On error the
 * setting being parsed keeps its previous value.
 *
 * Threading: a cqr_config_t is filled once at start-up and read-only
 * afterwards; the parse functions use getopt_long's global state and are
 * not thread-safe.
 */
#ifndef CQR_CONFIG_H
#define CQR_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ops/log.h"

#define CQR_SERVER_VERSION "0.1.0"
#define CQR_PROTOCOL_VERSION 1u

/* An optional HOST:PORT (CQR_CT_ADDR_OPT). */
typedef struct cqr_addr {
    char text[300];  /* as normalised ("127.0.0.1:9100"); "" = off */
    char host[256];  /* host without brackets */
    uint16_t port;   /* 0 = any free port */
} cqr_addr_t;

typedef struct cqr_config {
    char listen[300];          /* the --listen value as given, for logs */
    char listen_host[256];     /* host without brackets ("::1"), numeric
                                  or a name for getaddrinfo */
    uint16_t listen_port;      /* 0 = any free port */
    uint32_t threads;          /* I/O threads, each with its own loop */
    uint64_t max_frame_bytes;  /* largest accepted frame body, and the
                                  largest reply the server will build */
    uint64_t max_batch;        /* IDs per Lookup/Push request */
    uint32_t max_tables;       /* tables that may exist at once */
    uint32_t max_connections;  /* open client connections at once */
    uint64_t max_pending_bytes; /* soft limit of unsent reply bytes per
                                   connection; 4x is the hard limit */
    uint64_t max_table_memory; /* bytes of all tables: creation-time
                                  bytes plus what full tables and known-ID
                                  maps grow by */
    uint32_t max_dim;          /* largest table dim a CreateTable may ask */
    uint32_t max_rows;         /* most codebook rows a CreateTable may ask */
    uint32_t idle_timeout;     /* seconds without traffic before a
                                  connection is closed; 0 = never */
    uint32_t frame_timeout;    /* seconds a started frame may take to
                                  arrive whole; 0 = no limit */
    char auth_token_file[4096];  /* file holding the shared token; "" =
                                    no authentication */
    char admin_token_file[4096]; /* file holding the admin token; "" = no
                                    admin token (every authenticated
                                    client has admin rights) */
    uint32_t engine_threads;   /* helpers sharing one large lookup/push */
    uint32_t cluster_threads;  /* threads of one cluster phase */
    uint32_t cluster_workers;  /* cluster phases that run at once */
    cqr_log_level_t log_level; /* lines below this level are dropped */
    cqr_log_format_t log_format; /* text, or one JSON object per line */
    cqr_addr_t metrics;        /* --metrics-listen; text "" = off */
    char data_dir[4096];       /* RocksDB checkpoint store; "" = no
                                  persistence (ckpt.h) */
    uint32_t checkpoint_interval; /* seconds between periodic checkpoints;
                                     0 = none */
    uint32_t checkpoint_keep;  /* generations kept; 0 = all */
    uint64_t restore_generation; /* generation restored at start; 0 = the
                                    newest that verifies */
    int checkpoint_on_phase;   /* checkpoint before and after every
                                  cluster phase */
    int checkpoint_on_exit;    /* checkpoint at SIGTERM/SIGINT, after the
                                  drain */
    int allow_empty_restore;   /* start empty when checkpoints exist but
                                  none can be loaded (instead of refusing
                                  to start) */
    int accept_older_generation; /* start from an older generation when
                                    the last acknowledged one vanished
                                    (instead of refusing to start) */
    char serve[4096];          /* --serve: exports to serve read-only,
                                  comma-separated; "" = none (serve.h) */
    char serve_dir[4096];      /* --serve-dir: a folder of exports */
    uint32_t serve_poll_ms;    /* how often --serve looks for new exports;
                                  0 = at SIGHUP only */
    char config_path[4096];    /* --config FILE that was read, "" if none */
    int show_help;             /* --help was given: print usage, exit 0 */
    int show_version;          /* --version was given */
    int print_config;          /* --print-config: print the effective
                                  config as a config file, exit 0 */
} cqr_config_t;

typedef enum cqr_config_type {
    CQR_CT_ADDR,  /* HOST:PORT or [V6HOST]:PORT */
    CQR_CT_U32,   /* decimal count into a uint32_t */
    CQR_CT_U64,   /* decimal count into a uint64_t */
    CQR_CT_SIZE,  /* byte size with optional suffix, into a uint64_t */
    CQR_CT_LEVEL, /* log level name */
    CQR_CT_LOGFMT, /* log format name (text, json) */
    CQR_CT_FLAG,  /* command-line only switch without value (int) */
    CQR_CT_ADDR_OPT, /* "off", PORT (loopback) or HOST:PORT, into a
                        cqr_addr_t */
    CQR_CT_PATH,  /* a file or directory path into a char array of `max`
                     bytes; "" = unset */
    CQR_CT_BOOL   /* on/off, true/false, yes/no, 1/0 into an int */
} cqr_config_type_t;

typedef struct cqr_config_option {
    const char *name;       /* flag name without "--"; config-file key */
    cqr_config_type_t type; /* how the value is parsed and stored */
    uint64_t min, max;      /* inclusive bounds of numeric values */
    const char *def;        /* default as text (NULL for flags) */
    size_t offset;          /* field in cqr_config_t */
    const char *help;       /* one line for --help */
} cqr_config_option_t;

/* The option table (static storage); *n receives the number of rows. */
const cqr_config_option_t *cqr_config_options(size_t *n);

/* Fills cfg with every default. Cannot fail for the built-in table; a
 * failure is a programming bug and asserts. */
void cqr_config_defaults(cqr_config_t *cfg);

/* Parses `value` for the option `name` (without "--") into cfg. */
int cqr_config_set(cqr_config_t *cfg, const char *name, const char *value,
                   char *err, size_t errlen);

/* Parses argv (getopt_long; `--name VALUE`, `--name=VALUE`, `-h`) on top
 * of whatever cfg holds (call cqr_config_defaults first). Unknown options,
 * missing values and stray arguments are errors. --help and --version only
 * set show_help / show_version: the caller prints and exits. With
 * `--config FILE` the file is read (cqr_config_load_file) before any flag
 * is applied, so flags override it. */
int cqr_config_parse_args(cqr_config_t *cfg, int argc, char **argv,
                          char *err, size_t errlen);

/* Reads a config file (syntax above) into cfg. On error cfg may hold the
 * lines before the bad one; the message is "PATH:LINE: reason". Errors:
 * CQR_EINVAL (syntax, unknown name, bad value), CQR_EIO (cannot read). */
int cqr_config_load_file(cqr_config_t *cfg, const char *path, char *err,
                         size_t errlen);

/* Writes the effective config in config-file syntax (every option that a
 * file may set, one per line). */
void cqr_config_write(const cqr_config_t *cfg, FILE *f);

/* Writes the --help text. */
void cqr_config_usage(FILE *f, const char *prog);

/* Formats the effective config as one line of key=value pairs (for the
 * start-up log). Returns the length snprintf would have written. */
size_t cqr_config_format(const cqr_config_t *cfg, char *buf, size_t len);

#endif
