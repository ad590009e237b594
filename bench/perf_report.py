#!/usr/bin/env python3
"""Summary of a bench/perf.sh run: figures, ratios and issue 6's targets.

Reads results.jsonl (one JSON object per benchmark result, each tagged by
perf.sh), prints a Markdown report and writes it to OUT/summary.md, and
the figures that the targets use to OUT/summary.json.
"""
import argparse
import json
import sys


def load(path):
    res = {}
    extra = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            tag = r.get("tag", "?")
            if tag in res:
                extra.append(r)  # e.g. one line per library
            else:
                res[tag] = r
    return res, extra


def fmt_rate(x):
    if x is None:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    return f"{x / 1e3:.0f} k/s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", nargs="*", default=[])
    a = ap.parse_args()
    res, extra = load(a.results)
    meta = dict(m.split("=", 1) for m in a.meta if "=" in m)

    def get(tag, key="emb_per_s"):
        r = res.get(tag)
        if not r or r.get("failed"):
            return None
        return r.get(key)

    libs = {}
    for r in [res.get("kmeans_compare")] + extra:
        if r and r.get("bench") == "kmeans_compare":
            libs[r["lib"]] = r

    out = []
    p = out.append
    core = next((r.get("blas_core") for r in res.values()
                 if r.get("blas_core")), "?")
    p("# cqrps performance report\n")
    p(f"- command: `{meta.get('command', 'bench/perf.sh')}`; commit "
      f"{meta.get('commit', '?')}; {meta.get('elapsed_s', '?')} s")
    p(f"- machine: {meta.get('nproc', '?')} cores; OpenBLAS core: {core}; "
      f"Redis {meta.get('redis', '?')}; load average at start "
      f"{meta.get('load_start', '?')}, at end {meta.get('load_end', '?')}")
    p("- dim 64, batch 1024, IDs uniform over 1e6 known IDs, one client "
      "connection, depth 1 unless said")
    try:
        busy = float(meta.get("load_start", "0").split()[0])
        cores = float(meta.get("nproc", "1"))
    except ValueError:
        busy, cores = 0.0, 1.0
    if busy > 0.5 * cores:
        p(f"- **the machine was busy** (load {busy:.1f} on {cores:.0f} "
          "cores): wall-clock rates are lower bounds; the per-CPU-second "
          "figures (engine, server CPU, k-means vs sgemm) hold regardless")
    p("")

    # ---- main figures
    p("## Throughput and latency (one connection)\n")
    p("Each row is the run with the median emb/s of the runs listed (M/s).\n")
    p("| run | emb/s | MB/s | p50 us | p99 us | p999 us | server CPU-s / M emb "
      "| engine emb / CPU-s | runs |")
    p("|---|---|---|---|---|---|---|---|---|")
    rows = [("loopback TCP stream (limit)", "loop_stream"),
            ("loopback TCP request/response", "loop_rpc"),
            ("engine in-process lookup cqr", "engine_lookup_cqr"),
            ("engine in-process lookup full", "engine_lookup_full"),
            ("engine in-process push cqr adam", "engine_push_cqr"),
            ("engine in-process push full adam", "engine_push_full"),
            ("Redis MGET", "redis_lookup"),
            ("Redis MGET, depth 2", "redis_lookup_depth2"),
            ("Redis MGET+MSET", "redis_push"),
            ("Redis MGET+MSET, depth 2", "redis_push_depth2"),
            ("cqrps lookup cqr", "cqrps_lookup_cqr"),
            ("cqrps lookup cqr, depth 2", "cqrps_lookup_cqr_depth2"),
            ("cqrps lookup cqr, Zipf 1.05", "cqrps_lookup_cqr_zipf"),
            ("cqrps lookup full", "cqrps_lookup_full"),
            ("cqrps lookup full, depth 2", "cqrps_lookup_full_depth2"),
            ("cqrps push cqr adam", "cqrps_push_cqr"),
            ("cqrps push cqr adam, depth 2", "cqrps_push_cqr_depth2"),
            ("cqrps push full adam", "cqrps_push_full"),
            ("cqrps push full adam, depth 2", "cqrps_push_full_depth2")]
    for name, tag in rows:
        r = res.get(tag)
        if not r or r.get("failed"):
            p(f"| {name} | failed or skipped | | | | | | | |")
            continue
        cpu = r.get("server_cpu_s_per_m")
        cpu_s = f"{cpu:.3f}" if isinstance(cpu, (int, float)) and cpu >= 0 \
            else ""
        epc = r.get("emb_per_cpu_s")
        epc_s = fmt_rate(epc) if epc else ""
        runs = " / ".join(f"{x / 1e6:.2f}" for x in r.get("runs", []))
        p(f"| {name} | {fmt_rate(r['emb_per_s'])} | {r['mb_per_s']:.0f} | "
          f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p999_us']:.0f} | "
          f"{cpu_s} | {epc_s} | {runs} |")

    # ---- ratios and targets
    targets = []

    def target(name, value, goal, ok, fmt="{:.2f}"):
        v = "n/a" if value is None else fmt.format(value)
        st = ("n/a" if value is None else "reported" if goal == "reported"
              else "PASS" if ok else "MISS")
        targets.append({"target": name, "value": value, "goal": goal,
                        "status": st})
        p(f"| {name} | {v} | {goal} | {st} |")

    def ratio(a_, b_):
        return None if a_ is None or not b_ else a_ / b_

    p("\n## Ratios and targets (issue 6)\n")
    p("| target | measured | goal | status |")
    p("|---|---|---|---|")
    rl = get("redis_lookup")
    rp = get("redis_push")
    loop = get("loop_stream")
    for kind in ("cqr", "full"):
        x = get(f"cqrps_lookup_{kind}")
        r_ = ratio(x, rl)
        target(f"lookup {kind}: cqrps / Redis MGET", r_, ">= 10x",
               r_ is not None and r_ >= 10, "{:.2f}x")
        r_ = ratio(x, loop)
        target(f"lookup {kind}: cqrps / loopback limit", r_, ">= 40%",
               r_ is not None and r_ >= 0.4, "{:.0%}")
        p99 = get(f"cqrps_lookup_{kind}", "p99_us")
        target(f"lookup {kind}: p99 per batch (us)", p99, "< 1000 us",
               p99 is not None and p99 < 1000, "{:.0f}")
    # Pipelined: the client keeps two requests in flight on its one
    # connection, and Redis gets the same.
    for kind in ("cqr", "full"):
        x = get(f"cqrps_lookup_{kind}_depth2")
        r_ = ratio(x, get("redis_lookup_depth2"))
        target(f"lookup {kind}, both pipelined 2 deep: cqrps / Redis MGET",
               r_, ">= 10x", r_ is not None and r_ >= 10, "{:.2f}x")
        r_ = ratio(x, loop)
        target(f"lookup {kind}, pipelined 2 deep: cqrps / loopback limit",
               r_, ">= 40%", r_ is not None and r_ >= 0.4, "{:.0%}")
        p99 = get(f"cqrps_lookup_{kind}_depth2", "p99_us")
        target(f"lookup {kind}, pipelined 2 deep: p99 per batch (us)", p99,
               "< 1000 us", p99 is not None and p99 < 1000, "{:.0f}")
    for kind in ("cqr", "full"):
        r_ = ratio(get(f"cqrps_push_{kind}"), rp)
        target(f"push {kind} adam: cqrps / Redis MGET+MSET", r_, ">= 15x",
               r_ is not None and r_ >= 15, "{:.2f}x")
        r_ = ratio(get(f"cqrps_push_{kind}_depth2"), get("redis_push_depth2"))
        target(f"push {kind} adam, both pipelined 2 deep: cqrps / Redis "
               "MGET+MSET", r_, ">= 15x", r_ is not None and r_ >= 15,
               "{:.2f}x")
    # Per core, load-independent: CPU the server spends per embedding.
    for op, rtag in (("lookup", "redis_lookup"), ("push", "redis_push")):
        for kind in ("cqr", "full"):
            a_ = get(rtag, "server_cpu_s_per_m")
            b_ = get(f"cqrps_{op}_{kind}", "server_cpu_s_per_m")
            r_ = ratio(a_, b_) if a_ and a_ > 0 and b_ and b_ > 0 else None
            target(f"{op} {kind}: server CPU per embedding, Redis / cqrps "
                   "(per core)", r_, "reported", True, "{:.2f}x")
    # Several tables per step (8 tables, batch 4096 each, one connection).
    for op in ("lookup", "push"):
        one = get(f"multi_ref_{op}")
        r_ = ratio(get(f"multi_multi_{op}"), one)
        target(f"{op}: 8-table call / one-table call, per ID", r_, ">= 1x",
               r_ is not None and r_ >= 1, "{:.2f}x")
        r_ = ratio(get(f"multi_multi_{op}", "steps_per_s"),
                   get(f"multi_single_{op}", "steps_per_s"))
        target(f"{op}: 8-table step, one call / 8 round trips", r_, ">= 3x",
               r_ is not None and r_ >= 3, "{:.2f}x")
        rq = get(f"multi_multi_{op}", "requests_per_step")
        target(f"{op}: requests per 8-table step (server counters)", rq,
               "1", rq is not None and abs(rq - 1) < 0.01, "{:.2f}")
    # Many connections (depth 2 each) against one.
    c1 = get("scale_conns_1")
    r_ = ratio(get("scale_conns_4"), c1)
    target("lookup cqr: 4 connections / 1 connection (depth 2)", r_,
           ">= 1x", r_ is not None and r_ >= 1, "{:.2f}x")
    p99 = get("scale_conns_4", "p99_us")
    target("lookup cqr, 4 connections: p99 per batch (us)", p99, "< 2000 us",
           p99 is not None and p99 < 2000, "{:.0f}")
    cl = res.get("cluster_target")
    tot = cl.get("seconds_total") if cl and not cl.get("failed") else None
    target("cluster phase 1e6 IDs, k=1024, end to end (s)", tot, "< 15 s",
           tot is not None and tot < 15, "{:.2f}")
    ph = res.get("phase_target")
    tot = ph.get("seconds_total") if ph and not ph.get("failed") else None
    target("cluster phase 500k IDs, k=4096, dim 32, 4 chunks, defaults (s)",
           tot, "< 20 s", tot is not None and tot < 20, "{:.2f}")
    km = res.get("kmeans_engine")
    ours = km.get("seconds_per_chunk") if km and not km.get("failed") else None
    for lib in ("faiss", "sklearn"):
        theirs = libs.get(lib, {}).get("seconds_per_chunk")
        r_ = ratio(theirs, ours)
        target(f"k-means speed-up over {lib} (same points, iters, k)", r_,
               ">= 5x", r_ is not None and r_ >= 5, "{:.2f}x")
    if km and not km.get("failed"):
        target("k-means FLOP rate / sgemm (same tile shape, per thread)",
               km.get("frac_of_sgemm_tile"), "reported", True, "{:.0%}")
    for k in (1024, 65536):
        # The map grows in steps, so bytes per ID depend on where in a step
        # the count falls: the target holds only if every size meets it.
        ms = [r for t, r in res.items() if t.startswith(f"memory_k{k}_")
              and not r.get("failed")]
        v = max((m["bytes_per_id"] for m in ms), default=None)
        at = ", ".join(f"{m['vocab']:.0e}: {m['bytes_per_id']:.1f}"
                       for m in sorted(ms, key=lambda m: m["vocab"]))
        target(f"memory per known ID, cqr 4 chunks, k={k}, worst of "
               f"[{at}] (B, RSS growth)", v, "<= 24 B",
               v is not None and v <= 24, "{:.1f}")

    # Issue 19: the compacted cqr state.
    # (the target is at 1e7 and 1e8 IDs; smaller sizes are reported)
    for t, m in sorted(res.items()):
        if t.startswith("memory_compact_") and not m.get("failed"):
            big = m["vocab"] >= 1e7
            target(f"memory per known ID, cqr compacted, {m['vocab']:.0e} IDs "
                   f"(B, RSS growth)", m["bytes_per_id"],
                   "<= 9 B" if big else "reported", m["bytes_per_id"] <= 9,
                   "{:.2f}")
    for t, m in sorted(res.items()):
        if t.startswith("scale_vocab_compact_lookup_") and not m.get("failed"):
            v = int(m["vocab"])
            target(f"lookup cqr compacted at {v:.0e} IDs, through the server "
                   f"(M IDs/s)", m["emb_per_s"] / 1e6, "reported", True)
            r_ = ratio(m["emb_per_s"], get(f"scale_vocab_lookup_{v}"))
            target(f"lookup cqr compacted / map layout, both at {v:.0e} IDs",
                   r_, "reported", True)
            r_ = ratio(m["emb_per_s"], get("scale_vocab_lookup_10000000"))
            alt = res.get(f"scale_vocab_alt_compact_{v}")
            base = res.get("scale_vocab_alt_map_10000000")
            # Alternated rounds (perf.sh sec_vocab): the median of the
            # rounds' ratios is the figure; the single runs above are
            # minutes apart.
            rs = []
            if alt and base and not alt.get("failed") \
                    and not base.get("failed"):
                rs = sorted(a / b for a, b in zip(alt["runs_in_order"],
                                                  base["runs_in_order"])
                            if a and b)
            if rs:
                target(f"lookup cqr map layout at 1e7, alternated with the "
                       f"compacted table (M IDs/s, median of "
                       f"{len(base['runs'])})", base["emb_per_s"] / 1e6,
                       "reported", True)
                target(f"lookup cqr compacted at {v:.0e}, alternated with "
                       f"the map at 1e7 (M IDs/s, median of "
                       f"{len(alt['runs'])})", alt["emb_per_s"] / 1e6,
                       "reported", True)
                target(f"lookup cqr compacted at {v:.0e} IDs / map layout at "
                       f"1e7 (through the server): single runs "
                       f"{'n/a' if r_ is None else f'{r_:.2f}'}x; rounds "
                       f"[{', '.join(f'{x:.2f}' for x in rs)}], median",
                       rs[len(rs) // 2], ">= 1x", rs[len(rs) // 2] >= 1)
            else:
                target(f"lookup cqr compacted at {v:.0e} IDs / map layout at "
                       f"1e7 (through the server)", r_, ">= 1x",
                       r_ is not None and r_ >= 1)
            r_ = ratio(get(f"scale_vocab_compact_push_{v}"),
                       get("scale_vocab_push_10000000"))
            target(f"push cqr compacted at {v:.0e} IDs / map layout at 1e7",
                   r_, "reported", True)

    # ---- details
    p("\n## Server CPU per million embeddings\n")
    for tag in ("cqrps_lookup_cqr", "cqrps_lookup_full", "cqrps_push_cqr",
                "cqrps_push_full", "cqrps_lookup_cqr_depth2",
                "cqrps_lookup_full_depth2", "cqrps_push_cqr_depth2",
                "cqrps_push_full_depth2", "redis_lookup", "redis_push"):
        r = res.get(tag)
        if r and not r.get("failed"):
            p(f"- {tag}: {r.get('server_cpu_s_per_m', -1):.3f} CPU-s per M "
              f"embeddings ({r.get('server_cores', float('nan')):.2f} cores "
              f"busy)" if "server_cores" in r else
              f"- {tag}: {r.get('server_cpu_s_per_m', -1):.3f} CPU-s per M "
              f"embeddings")

    if km and not km.get("failed"):
        p("\n## k-means step (same points, k, iterations, threads)\n")
        p(f"- engine: {km['seconds_per_chunk']:.3f} s per chunk "
          f"(n={km['n']}, w={km['w']}, k={km['k']}, {km['iters']} iterations, "
          f"{km['threads']} threads, k-means++ init), {km['gflops']:.1f} "
          f"GFLOP/s of wall time, {km['gflops_per_thread']:.1f} GFLOP per "
          f"CPU-second = {km['frac_of_sgemm_tile']:.0%} of sgemm on the same "
          f"tile shape ({km['sgemm_gflops_tile']:.1f} GFLOP per CPU-second, "
          f"1 thread), {km['frac_of_sgemm_1024']:.0%} of sgemm 1024^3 "
          f"({km['sgemm_gflops_1024']:.1f}); inertia {km['inertia']:.5g}")
        for lib, r in libs.items():
            p(f"- {lib} {r.get('version')}: {r['seconds_per_chunk']:.3f} s per "
              f"chunk ({r['init']} init, iterations {r['iters_done']}), "
              f"inertia {r['inertia']:.5g}")

    def curve(title, prefix, key, unit, val="emb_per_s", also=()):
        pts = []
        for tag, r in res.items():
            if (tag.startswith(prefix) or tag in also) and not r.get("failed"):
                pts.append((r.get(key), r))
        if not pts:
            return
        pts.sort(key=lambda t: t[0])
        p(f"\n## {title}\n")
        if val == "emb_per_s":
            p(f"| {unit} | emb/s | p99 us | server cores busy |")
            p("|---|---|---|---|")
        else:
            p(f"| {unit} | total s | k-means s | assign s | CPU-s | "
              "peak RSS MB | k-means iterations (most, sum) |")
            p("|---|---|---|---|---|---|---|")
        for x, r in pts:
            if val == "emb_per_s":
                p(f"| {x:g} | {fmt_rate(r['emb_per_s'])} | "
                  f"{r['p99_us']:.0f} | {r.get('server_cores', -1):.2f} |")
            else:
                cpu = r.get("cpu_s")
                p(f"| {x:g} | {r['seconds_total']:.2f} | "
                  f"{r['seconds_kmeans']:.2f} | {r['seconds_assign']:.2f} | "
                  f"{'' if cpu is None else f'{cpu:.2f}'} | "
                  f"{r['peak_rss_bytes'] / 1e6:.0f} | "
                  f"{r.get('kmeans_iters_max', '')}, "
                  f"{r.get('kmeans_iters_sum', '')} |")

    curve("Lookups against batch size (cqr, 1e6 IDs)", "scale_batch_",
          "batch", "batch")
    curve("Lookups against known IDs (cqr)", "scale_vocab_lookup_", "vocab",
          "known IDs")
    curve("Pushes against known IDs (cqr, Adam)", "scale_vocab_push_", "vocab",
          "known IDs")
    curve("Lookups against known IDs (full)", "scale_vocab_full_lookup_",
          "vocab", "known IDs", also=("cqrps_lookup_full",))
    thr = sorted((int(t.rsplit("_", 1)[1]), r) for t, r in res.items()
                 if t.startswith("scale_threads_") and not r.get("failed"))
    if thr:
        p("\n## Lookups against server I/O threads (cqr, 4 connections, "
          "depth 2)\n")
        p("| server threads | emb/s | p99 us | server cores busy |")
        p("|---|---|---|---|")
        for th, r in thr:
            p(f"| {th} | {fmt_rate(r['emb_per_s'])} | {r['p99_us']:.0f} | "
              f"{r.get('server_cores', -1):.2f} |")
    hel = [(t, r) for t, r in res.items()
           if t.startswith("scale_helpers_") and not r.get("failed")]
    if hel:
        p("\n## One connection against engine helpers (cqr, 1e6 IDs; "
          "--engine-threads)\n")
        p("| engine helpers | op | depth | emb/s | p99 us | server cores busy "
          "| server CPU-s / M emb |")
        p("|---|---|---|---|---|---|---|")
        for t, r in sorted(hel):
            _, _, et, op, d = t.split("_")
            p(f"| {et} | {op} | {d[1:]} | {fmt_rate(r['emb_per_s'])} | "
              f"{r['p99_us']:.0f} | {r.get('server_cores', -1):.2f} | "
              f"{r.get('server_cpu_s_per_m', -1):.3f} |")
    conns = sorted((int(t.rsplit("_", 1)[1]), r) for t, r in res.items()
                   if t.startswith("scale_conns_") and not r.get("failed"))
    if conns:
        p("\n## Lookups against client connections (cqr, 1e6 IDs, depth 2 "
          "each)\n")
        p("| connections | emb/s | p50 us | p99 us | server cores busy |")
        p("|---|---|---|---|---|")
        for n, r in conns:
            p(f"| {n} | {fmt_rate(r['emb_per_s'])} | {r['p50_us']:.0f} | "
              f"{r['p99_us']:.0f} | {r.get('server_cores', -1):.2f} |")
    mt = [(t, r) for t, r in res.items()
          if t.startswith("multi_") and not r.get("failed")]
    if mt:
        p("\n## Steps over 8 tables (cqr, batch 4096 per table, one "
          "connection)\n")
        p("| op | calls | tables | steps/s | emb/s | p99 us per step | "
          "requests per step |")
        p("|---|---|---|---|---|---|---|")
        order = {"ref": 0, "multi": 1, "bf16": 2, "pipelined": 3, "single": 4}
        for t, r in sorted(mt, key=lambda x: (x[0].rsplit("_", 1)[1],
                                              order.get(x[0].split("_")[1],
                                                        9))):
            how = t.split("_")[1]
            name = {"ref": "one table", "multi": "one multi-table call",
                    "bf16": "one multi-table call, bf16",
                    "pipelined": "8 calls in flight",
                    "single": "8 round trips"}.get(how, how)
            rq = r.get("requests_per_step", -1)
            p(f"| {r['op']} | {name} | {r.get('tables', 1)} | "
              f"{r.get('steps_per_s', 0):.1f} | {fmt_rate(r['emb_per_s'])} "
              f"| {r['p99_us']:.0f} | {rq:.2f} |")
    curve("Cluster phase against known IDs (k=1024)", "cluster_vocab_",
          "vocab", "known IDs", val="cluster", also=("cluster_target",))
    curve("Cluster phase against k (1e6 IDs)", "cluster_k_", "rows", "k",
          val="cluster", also=("cluster_target",))
    curve("Cluster phase against k (500,000 IDs, dim 32, 4 chunks, "
          "defaults)", "phase_k_", "rows", "k", val="cluster",
          also=("phase_target",))
    curve("Cluster phase against known IDs (k=4096, dim 32, 4 chunks, "
          "defaults)", "phase_vocab_", "vocab", "known IDs", val="cluster",
          also=("phase_target",))

    failed = [t for t, r in res.items() if r.get("failed")]
    if failed:
        p(f"\nFailed runs: {', '.join(failed)} (see logs/)")

    text = "\n".join(out) + "\n"
    print(text)
    with open(f"{a.out}/summary.md", "w") as f:
        f.write(text)
    with open(f"{a.out}/summary.json", "w") as f:
        json.dump({"meta": meta, "targets": targets}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
