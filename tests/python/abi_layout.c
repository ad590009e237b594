/* abi_layout.c -- prints the size and field offsets of every struct of
 * cqrps.h, one "type size N" or "type.field N" line each, so the Python
 * tests can check that cqrps/_lib.py mirrors the header exactly (ctypes
 * cannot read a header; a wrong mirror would corrupt memory silently). */
#include <stddef.h>
#include <stdio.h>

#include "cqrps.h"

/* One line of the output: "type size N" or "type.field N". */
typedef struct layout_line {
    const char *what;
    size_t value;
} layout_line_t;

#define SIZE(t) {#t " size", sizeof(t)}
#define OFF(t, f) {#t "." #f, offsetof(t, f)}

static const layout_line_t layout[] = {
    SIZE(cqrps_options_t),
    OFF(cqrps_options_t, connect_timeout_ms),
    OFF(cqrps_options_t, request_timeout_ms),
    OFF(cqrps_options_t, token),
    OFF(cqrps_options_t, token_len),
    OFF(cqrps_options_t, admin_token),
    OFF(cqrps_options_t, admin_token_len),
    OFF(cqrps_options_t, client_name),
    OFF(cqrps_options_t, reconnect),
    OFF(cqrps_options_t, max_batch),

    SIZE(cqrps_server_info_t),
    OFF(cqrps_server_info_t, server_version),
    OFF(cqrps_server_info_t, protocol_version),
    OFF(cqrps_server_info_t, admin),
    OFF(cqrps_server_info_t, max_frame_bytes),
    OFF(cqrps_server_info_t, max_batch),
    OFF(cqrps_server_info_t, max_parts),

    SIZE(cqrps_part_t),
    OFF(cqrps_part_t, table),
    OFF(cqrps_part_t, ids),
    OFF(cqrps_part_t, n),
    OFF(cqrps_part_t, offsets),
    OFF(cqrps_part_t, nbags),
    OFF(cqrps_part_t, pooling),
    OFF(cqrps_part_t, out),
    OFF(cqrps_part_t, grads),

    SIZE(cqrps_optimizer_update_t),
    OFF(cqrps_optimizer_update_t, set),
    OFF(cqrps_optimizer_update_t, lr),
    OFF(cqrps_optimizer_update_t, beta1),
    OFF(cqrps_optimizer_update_t, beta2),
    OFF(cqrps_optimizer_update_t, eps),
    OFF(cqrps_optimizer_update_t, weight_decay),

    SIZE(cqrps_table_config_t),
    OFF(cqrps_table_config_t, kind),
    OFF(cqrps_table_config_t, dim),
    OFF(cqrps_table_config_t, chunks),
    OFF(cqrps_table_config_t, rows),
    OFF(cqrps_table_config_t, seed),
    OFF(cqrps_table_config_t, optimizer),
    OFF(cqrps_table_config_t, lr),
    OFF(cqrps_table_config_t, beta1),
    OFF(cqrps_table_config_t, beta2),
    OFF(cqrps_table_config_t, eps),
    OFF(cqrps_table_config_t, weight_decay),
    OFF(cqrps_table_config_t, schedule_every),
    OFF(cqrps_table_config_t, schedule_max_phases),
    OFF(cqrps_table_config_t, cluster_iters),
    OFF(cqrps_table_config_t, cluster_sample),
    OFF(cqrps_table_config_t, reset_optimizer),
    OFF(cqrps_table_config_t, init_scale),
    OFF(cqrps_table_config_t, cluster_tol),
    OFF(cqrps_table_config_t, admit_after),
    OFF(cqrps_table_config_t, evict_after_phases),
    OFF(cqrps_table_config_t, max_ids),
    OFF(cqrps_table_config_t, ttl_seconds),
    OFF(cqrps_table_config_t, compact),

    SIZE(cqrps_table_info_t),
    OFF(cqrps_table_info_t, name),
    OFF(cqrps_table_info_t, config),
    OFF(cqrps_table_info_t, known_ids),
    OFF(cqrps_table_info_t, param_bytes),
    OFF(cqrps_table_info_t, optimizer_bytes),
    OFF(cqrps_table_info_t, index_bytes),
    OFF(cqrps_table_info_t, bytes_per_known_id),
    OFF(cqrps_table_info_t, phases_done),
    OFF(cqrps_table_info_t, phase_running),
    OFF(cqrps_table_info_t, lookups),
    OFF(cqrps_table_info_t, pushes),
    OFF(cqrps_table_info_t, examples_pushed),
    OFF(cqrps_table_info_t, last_inertia),
    OFF(cqrps_table_info_t, last_phase_seconds),
    OFF(cqrps_table_info_t, ids_admitted),
    OFF(cqrps_table_info_t, ids_evicted),
    OFF(cqrps_table_info_t, sketch_bytes),
    OFF(cqrps_table_info_t, serving_generation),
    OFF(cqrps_table_info_t, compacted),
    OFF(cqrps_table_info_t, static_ids),
    OFF(cqrps_table_info_t, compacting),

    SIZE(cqrps_phase_status_t),
    OFF(cqrps_phase_status_t, phase_id),
    OFF(cqrps_phase_status_t, state),
    OFF(cqrps_phase_status_t, stage),
    OFF(cqrps_phase_status_t, fraction),
    OFF(cqrps_phase_status_t, inertia),
    OFF(cqrps_phase_status_t, seconds),
    OFF(cqrps_phase_status_t, ids_assigned),
    OFF(cqrps_phase_status_t, replayed_pushes),
    OFF(cqrps_phase_status_t, error),
    OFF(cqrps_phase_status_t, chunk),
    OFF(cqrps_phase_status_t, chunks),
    OFF(cqrps_phase_status_t, iter),
    OFF(cqrps_phase_status_t, iters),
    OFF(cqrps_phase_status_t, eta_seconds),
    OFF(cqrps_phase_status_t, kmeans_iters),
    OFF(cqrps_phase_status_t, cancelled),

    SIZE(cqrps_counter_t),
    OFF(cqrps_counter_t, name),
    OFF(cqrps_counter_t, value),
    OFF(cqrps_counter_t, count),
    OFF(cqrps_counter_t, is_count),

    SIZE(cqrps_stats_t),
    OFF(cqrps_stats_t, server_version),
    OFF(cqrps_stats_t, uptime_seconds),
    OFF(cqrps_stats_t, connections),
    OFF(cqrps_stats_t, requests),
    OFF(cqrps_stats_t, errors),
    OFF(cqrps_stats_t, bytes_in),
    OFF(cqrps_stats_t, bytes_out),
    OFF(cqrps_stats_t, tables),
    OFF(cqrps_stats_t, ntables),
    OFF(cqrps_stats_t, counters),
    OFF(cqrps_stats_t, ncounters),

    SIZE(cqrps_checkpoint_info_t),
    OFF(cqrps_checkpoint_info_t, generation),
    OFF(cqrps_checkpoint_info_t, unix_time),
    OFF(cqrps_checkpoint_info_t, bytes),
    OFF(cqrps_checkpoint_info_t, tables),
    OFF(cqrps_checkpoint_info_t, shard),

    SIZE(cqrps_export_opts_t),
    OFF(cqrps_export_opts_t, generation),
    OFF(cqrps_export_opts_t, since),
    OFF(cqrps_export_opts_t, dtype),
    OFF(cqrps_export_opts_t, progress),
    OFF(cqrps_export_opts_t, progress_ud),

    SIZE(cqrps_export_info_t),
    OFF(cqrps_export_info_t, generation),
    OFF(cqrps_export_info_t, base_generation),
    OFF(cqrps_export_info_t, bytes),
    OFF(cqrps_export_info_t, ids),
    OFF(cqrps_export_info_t, build_seconds),
    OFF(cqrps_export_info_t, file),

    SIZE(cqrps_compact_info_t),
    OFF(cqrps_compact_info_t, moved_ids),
    OFF(cqrps_compact_info_t, known_ids),
    OFF(cqrps_compact_info_t, static_ids),
    OFF(cqrps_compact_info_t, index_bytes),
    OFF(cqrps_compact_info_t, seconds),

    /* Enum sizes: _lib.py passes them as C ints. */
    SIZE(cqrps_kind_t),
    SIZE(cqrps_optimizer_t),
    SIZE(cqrps_pooling_t),
    SIZE(cqrps_phase_state_t),
};

int main(void)
{
    for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++)
        printf("%s %zu\n", layout[i].what, layout[i].value);
    return 0;
}
