/* cli_print.h -- output helpers of the `cqrps` CLI (client/cli/): JSON
 * objects built with cJSON (Debian: libcjson) and the human-readable
 * tables, used by the commands' printers (cli_cmd.c) and the error report
 * (cli.c).
 *
 * JSON: the js_* functions add one member to an object. Numbers are
 * exact: unsigned 64-bit integers are written as their decimal digits
 * (cJSON's own numbers are doubles, which stop at 2^53), doubles and
 * floats in the fewest digits that read back as the same value (cJSON
 * builds the objects and escapes the strings); NaN and Inf become null. An allocation that
 * fails is remembered, and js_print then reports it instead of printing
 * a partial object. Human output: aligned text for tables and configs;
 * integers are printed whole (never as 1.7e+10). The formats are the
 * CLI's interface (scripts and tests read them), so they change only on
 * purpose.
 *
 * Rules: output goes to stdout with stdio; the arguments are read during
 * the call only (cJSON copies keys and strings). Single-threaded (the
 * CLI's one thread). Not part of libcqrps.
 */
#ifndef CQRPS_CLI_PRINT_H
#define CQRPS_CLI_PRINT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "cqrps.h"

/* A new object (NULL only when out of memory, which js_print reports). */
cJSON *js_object(void);
/* Adds member k to o (a NULL o or item is remembered as a failure). */
void js_add(cJSON *o, const char *k, cJSON *item);
void js_str(cJSON *o, const char *k, const char *v);
void js_u64(cJSON *o, const char *k, uint64_t v);
void js_i64(cJSON *o, const char *k, int64_t v);
void js_dbl(cJSON *o, const char *k, double v);
/* A float in the fewest digits that read back as the same float. */
void js_flt(cJSON *o, const char *k, float v);
void js_bool(cJSON *o, const char *k, int v);
/* A library counter: its exact count, else its value. */
void js_counter(cJSON *o, const cqrps_counter_t *c);
cJSON *js_config(const cqrps_table_config_t *c);
cJSON *js_info(const cqrps_table_info_t *t);
cJSON *js_phase(const cqrps_phase_status_t *s);
/* Prints o on one line and a newline to stdout, and deletes it; 0, or -1
 * (with a message on stderr, nothing on stdout) when building it ran out
 * of memory. */
int js_print(cJSON *o);

/* A library counter's value as text: a count or a whole number in full,
 * else with 6 significant digits. */
void counter_text(const cqrps_counter_t *c, char *buf, size_t len);

/* "1.5 MiB" and the like. */
void human_bytes(uint64_t b, char *buf, size_t len);
void print_describe(const cqrps_table_info_t *t);
void print_table_rows(const cqrps_table_info_t *t, size_t n);
/* Per-operation latency quantiles from the server's histogram counters. */
void print_latency(const cqrps_stats_t *st);

#endif
