/* cli_print.h -- output helpers of the `cqrps` CLI (client/cli/): a
 * small JSON writer and the human-readable tables, used by the commands'
 * printers (cli_cmd.c) and the error report (cli.c).
 *
 * JSON: the js_* functions write one member of an object to stdout;
 * `first` tracks whether a comma is due and is set to 0 after the first
 * member; the caller writes the braces. Strings are escaped per RFC 8259;
 * a non-finite number is written as null. Human output: aligned text for
 * tables and configs; the formats are the CLI's interface (scripts and
 * tests read them), so they change only on purpose.
 *
 * Rules: everything writes to stdout with stdio, nothing fails or
 * allocates beyond stdio and local buffers, nothing is kept: the
 * arguments are read during the call only. Single-threaded (the CLI's
 * one thread). Not part of libcqrps.
 */
#ifndef CQRPS_CLI_PRINT_H
#define CQRPS_CLI_PRINT_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.h"

void js_str(const char *s);
void js_key(const char *k, int *first);
void js_kstr(const char *k, const char *v, int *first);
void js_ku64(const char *k, uint64_t v, int *first);
void js_kdbl(const char *k, double v, int *first);
/* A float in the fewest digits that read back as the same float. */
void js_kflt(const char *k, float v, int *first);
void js_kbool(const char *k, int v, int *first);
void js_config(const cqrps_table_config_t *c);
void js_info(const cqrps_table_info_t *t);
void js_phase(const cqrps_phase_status_t *s);

/* "1.5 MiB" and the like. */
void human_bytes(uint64_t b, char *buf, size_t len);
void print_describe(const cqrps_table_info_t *t);
void print_table_rows(const cqrps_table_info_t *t, size_t n);
/* Per-operation latency quantiles from the server's histogram counters. */
void print_latency(const cqrps_stats_t *st);

#endif
