#!/usr/bin/env python3
"""bench/ctr.sh's report: summary.md and plots from the run TSVs.

    ctr_report.py OUTDIR REFERENCE_TSV

Reads OUTDIR/runs.tsv, epochs.tsv, speed.tsv and scale.tsv (whichever
exist) and writes OUTDIR/summary.md, auc.png and speed.png (matplotlib,
if installed). A run's tag is section-kind-pP-sS-eE-wW.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

KINDS = ["full", "hash", "ce", "cqr"]


def read_tsv(path: str) -> List[Dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader((ln for ln in f if not ln.startswith("#")),
                                   delimiter="\t"))


def parse_tag(tag: str) -> Dict[str, str]:
    sec, kind, p, s, e, w = tag.split("-")
    return dict(section=sec, kind=kind, ppd=p[1:], seed=s[1:], epochs=e[1:],
                workers=w[1:])


def mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


class Quality:
    """Best AUC / logloss of the first L epochs of each run."""

    def __init__(self, epochs: List[Dict[str, str]]) -> None:
        self.runs: Dict[str, List[Tuple[int, float, float, float]]] = \
            defaultdict(list)
        for r in epochs:
            self.runs[r["run"]].append(
                (int(r["epoch"]), float(r["val_auc"]),
                 float(r["val_logloss"]), float(r["examples_per_s"])))
        self.tags = {t: parse_tag(t) for t in self.runs}

    def cell(self, section: str, kind: str, ppd: Optional[int], length: int,
             workers: int = 1) -> Tuple[List[float], List[float]]:
        """Per-seed (AUC, logloss) lists of a configuration."""
        aucs, lls = [], []
        for tag, t in self.tags.items():
            if t["section"] != section or t["kind"] != kind or \
                    int(t["workers"]) != workers:
                continue
            if kind != "full" and int(t["ppd"]) != ppd:
                continue
            e = int(t["epochs"])
            if kind == "cqr" and e != length:
                continue  # cqr's phases depend on the run's length
            if kind != "cqr" and e < length:
                continue
            rows = [r for r in self.runs[tag] if r[0] <= length]
            if len(rows) < length:
                continue  # unfinished
            aucs.append(max(r[1] for r in rows))
            lls.append(min(r[2] for r in rows))
        return aucs, lls


def fmt(aucs: List[float], lls: List[float]) -> str:
    if not aucs:
        return "-"
    sp = f" ±{(max(aucs) - min(aucs)) / 2:.4f}" if len(aucs) > 1 else ""
    return f"{mean(aucs):.4f}{sp} / {mean(lls):.4f}"


def reference(path: str) -> Dict[Tuple[int, str, int], Tuple[float, float]]:
    out = {}
    for r in read_tsv(path):
        out[(int(r["epochs"]), r["kind"], int(r["ppd"]))] = \
            (float(r["auc"]), float(r["logloss"]))
    return out


def quality_section(q: Quality, ref, lengths: List[int], ppds: List[int],
                    out: List[str], checks: List[Tuple[bool, str]]) -> None:
    out += ["## Quality: DLRM-lite on ml-1m-partial", "",
            "Best validation AUC / best mean BCE over the epochs, mean of "
            "the seeds (± half their range); `ref` is the published CCE "
            "code (../shared/reference/ml-1m-partial.md). One worker, "
            "batch 1024, the server's default table settings.", "",
            "| epochs | P | full | hash | ce | cqr | ref full | ref hash | "
            "ref ce | ref cce |", "|---|---|---|---|---|---|---|---|---|---|"]
    for L in lengths:
        for i, p in enumerate(ppds):
            cells = []
            for k in KINDS:
                if k == "full" and i > 0:
                    cells.append("")
                    continue
                cells.append(fmt(*q.cell("quality", k, p, L)))
            refs = []
            for k in KINDS:
                r = ref.get((L, k, 0 if k == "full" else p))
                refs.append("" if r is None or (k == "full" and i > 0) else
                            f"{r[0]:.4f} / {r[1]:.4f}")
            out.append(f"| {L} | {p} | " + " | ".join(cells + refs) + " |")
    out.append("")
    for L in lengths:
        for p in ppds:
            c = mean(q.cell("quality", "cqr", p, L)[0])
            r = ref.get((L, "cqr", p))
            if r and c == c:
                checks.append((c >= r[0], f"cqr >= published CCE, {L} "
                               f"epochs, P={p}: {c:.4f} vs {r[0]:.4f}"))
    for L in lengths:
        for p in [x for x in ppds if x in (64, 256)]:
            c = mean(q.cell("quality", "cqr", p, L)[0])
            for k in ("hash", "ce"):
                o = mean(q.cell("quality", k, p, L)[0])
                if c == c and o == o:
                    checks.append((c > o, f"cqr > {k}, {L} epochs, P={p}: "
                                   f"{c:.4f} vs {o:.4f}"))
    L = max(lengths)
    c = mean(q.cell("quality", "cqr", 256, L)[0])
    f = mean(q.cell("quality", "full", None, L)[0])
    if c == c and f == f:
        checks.append((c >= f - 0.005, f"cqr within 0.005 of our full, P=256,"
                       f" {L} epochs: {c:.4f} vs {f:.4f} ({c - f:+.4f})"))


def workers_section(q: Quality, lengths: List[int], runs, out: List[str],
                    checks: List[Tuple[bool, str]]) -> None:
    ws = sorted({int(t["workers"]) for t in q.tags.values()
                 if t["section"] == "workers"})
    if not ws:
        return
    out += ["## Several workers: cqr at P=256", "",
            "The same run from 1, 2 and 4 worker processes (gloo, DDP for "
            "the MLPs, each worker pushing its own embedding gradients; "
            "global batch 1024). Best AUC / logloss, mean of the seeds; "
            "run seconds are wall time with the other grid runs beside.", "",
            "| epochs | workers | AUC / logloss | vs 1 worker | seconds |",
            "|---|---|---|---|---|"]
    for L in lengths:
        base = mean(q.cell("quality", "cqr", 256, L)[0])
        for w in [1] + ws:
            sec = "quality" if w == 1 else "workers"
            a, ll = q.cell(sec, "cqr", 256, L, w)
            secs = [float(r["seconds"]) for r in runs
                    if r["section"] == sec and r["kind"] == "cqr" and
                    r["ppd"] == "256" and r["epochs"] == str(L) and
                    r["workers"] == str(w)]
            d = mean(a) - base
            out.append(f"| {L} | {w} | {fmt(a, ll)} | "
                       f"{'' if w == 1 else f'{d:+.4f}'} | "
                       f"{mean(secs):.0f} |")
            if w == 4 and a and base == base:
                checks.append((abs(d) <= 0.005, f"4 workers within 0.005 of "
                               f"1 worker, {L} epochs: {mean(a):.4f} vs "
                               f"{base:.4f}"))
    out.append("")


def speed_section(rows: List[Dict[str, str]], out: List[str],
                  checks: List[Tuple[bool, str]]
                  ) -> Dict[str, Tuple[float, float]]:
    by: Dict[str, List[Dict[str, str]]] = defaultdict(list)
    for r in rows:
        by[r["label"]].append(r)
    if not by:
        return {}
    med = {}
    for lab, rs in by.items():
        med[lab] = (statistics.median(float(r["examples_per_s"]) for r in rs),
                    statistics.median(float(r["requests_per_step"] or 0)
                                      for r in rs))
    out += ["## Speed", "",
            "One measured epoch each (about 200 steps of 1024 rows), medians "
            "of the interleaved rounds, every run alone against its own "
            "server(s) on this 2-core machine (the server shares the cores "
            "with the trainer). `local`: the same model with "
            "`nn.EmbeddingBag` tables in the trainer's process (sparse "
            "gradients, SparseAdam), one process. Requests per step: "
            "lookups + pushes the servers counted, per worker step, over "
            "all shards.", "",
            "| run | batch | workers | examples/s | steps/s | vs local | "
            "requests/step |", "|---|---|---|---|---|---|---|"]
    for lab in sorted(by, key=lambda x: (x.split("-")[0], int(
            by[x][0]["batch"]), x)):
        r0 = by[lab][0]
        b = int(r0["batch"])
        eps, rps = med[lab]
        data = lab.split("-")[0]
        loc = med.get(f"{data}-local-b{b}")
        vs = f"{eps / loc[0]:.2f}x" if loc and "local" not in lab else ""
        out.append(f"| {lab} | {b} | {r0['workers']} | {eps:.0f} | "
                   f"{eps / b:.1f} | {vs} | "
                   f"{'' if 'local' in lab else f'{rps:.1f}'} |")
    out.append("")
    for data in ("ml", "synth"):
        loc = med.get(f"{data}-local-b4096")
        rem = med.get(f"{data}-cqr-w1-b4096")
        if loc and rem:
            checks.append((rem[0] >= loc[0], f"remote steps/s at batch 4096 "
                           f">= local ({data}): {rem[0] / 4096:.1f} vs "
                           f"{loc[0] / 4096:.1f}"))
    return med


def scale_section(rows: List[Dict[str, str]], out: List[str]) -> None:
    if not rows:
        return
    r = rows[0]
    gib = 1 << 30
    out += ["## Scale: synthetic-ctr through 2 shards", "",
            "26 sparse + 13 dense features, 2.52e6 training rows, Zipf 0.5 "
            "over a 4e7-ID vocabulary, cqr at P=1024 (tables with at most "
            "1024 IDs full), one epoch at batch 4096, one worker.", "",
            "| known IDs | examples/s | val AUC | requests/step | server RSS "
            "(both) | peak | table bytes / known ID (params + index + "
            "optimizer) | RSS growth / known ID | wall |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {int(r['known_ids']):,} | {float(r['examples_per_s']):.0f} | "
            f"{float(r['val_auc']):.4f} | {float(r['requests_per_step']):.1f}"
            f" | {int(r['server_rss_bytes']) / gib:.2f} GiB | "
            f"{int(r['server_peak_bytes']) / gib:.2f} GiB | "
            f"{float(r['bytes_per_known_id_tables']):.1f} | "
            f"{float(r['bytes_per_known_id_rss']):.1f} | {r['wall']} |", ""]


def plots(outdir: str, q: Quality, ref, lengths: List[int],
          ppds: List[int], med: Dict[str, Tuple[float, float]]) -> List[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if q.runs:
        fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths),
                                                           4.5), squeeze=False)
        colors = {"full": "black", "hash": "tab:orange", "ce": "tab:blue",
                  "cqr": "tab:red"}
        for ax, L in zip(axes[0], lengths):
            for k in KINDS:
                if k == "full":
                    a = q.cell("quality", "full", None, L)[0]
                    if a:
                        ax.axhline(mean(a), color="black", lw=1,
                                   label="ours full")
                    r = ref.get((L, "full", 0))
                    if r:
                        ax.axhline(r[0], color="black", lw=1, ls=":",
                                   label="ref full")
                    continue
                xs, ys, lo, hi = [], [], [], []
                for p in ppds:
                    a = q.cell("quality", k, p, L)[0]
                    if a:
                        xs.append(p)
                        ys.append(mean(a))
                        lo.append(mean(a) - min(a))
                        hi.append(max(a) - mean(a))
                if xs:
                    ax.errorbar(xs, ys, yerr=[lo, hi], color=colors[k],
                                marker="o", lw=2 if k == "cqr" else 1,
                                label=f"ours {k}")
                rx = [p for p in ppds if (L, k, p) in ref]
                ax.plot(rx, [ref[(L, k, p)][0] for p in rx], color=colors[k],
                        ls="--", marker="x", lw=1,
                        label=f"ref {'cce' if k == 'cqr' else k}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(ppds, [str(p) for p in ppds])
            ax.set_xlabel("P (parameters per dimension per table)")
            ax.set_ylabel("best validation AUC (mean of seeds)")
            ax.set_title(f"DLRM-lite, ml-1m-partial, {L} epochs")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "auc.png"), dpi=110)
        plt.close(fig)
        made.append("auc.png")
    if med:
        labs = sorted(med, key=lambda x: (x.split("-")[0], x))
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(labs) + 1.5))
        ax.barh(range(len(labs)), [med[x][0] for x in labs],
                color=["tab:gray" if "local" in x else "tab:red"
                       for x in labs])
        ax.set_yticks(range(len(labs)), labs, fontsize=8)
        ax.set_xlabel("training examples/s (median of rounds)")
        ax.set_title("train_ctr.py speed: remote tables vs local "
                     "nn.EmbeddingBag (gray)")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "speed.png"), dpi=110)
        plt.close(fig)
        made.append("speed.png")
    return made


def main() -> int:
    outdir, ref_path = sys.argv[1], sys.argv[2]
    ref = reference(ref_path)
    runs = read_tsv(os.path.join(outdir, "runs.tsv"))
    q = Quality(read_tsv(os.path.join(outdir, "epochs.tsv")))
    lengths = sorted({int(x) for x in os.environ.get(
        "LENGTHS", "10 30").split()})
    ppds = sorted({int(x) for x in os.environ.get(
        "PPDS", "64 256 1024").split()})
    try:
        commit = subprocess.run(["git", "-C", os.path.dirname(ref_path),
                                 "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    out = ["# train_ctr.py figures (bench/ctr.sh)", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"commit {commit or '?'}, {os.cpu_count()} cores. Trainer flags "
           f"beyond the defaults: `{os.environ.get('FLAGS') or 'none'}`.", ""]
    checks: List[Tuple[bool, str]] = []
    if q.runs:
        quality_section(q, ref, lengths, ppds, out, checks)
        workers_section(q, lengths, runs, out, checks)
    med = speed_section(read_tsv(os.path.join(outdir, "speed.tsv")), out,
                        checks)
    scale_section(read_tsv(os.path.join(outdir, "scale.tsv")), out)
    if runs:
        by: Dict[str, List[float]] = defaultdict(list)
        for r in runs:
            by[f"{r['section']} {r['kind']} {r['epochs']} epochs, "
               f"{r['workers']} worker(s)"].append(float(r["seconds"]))
        out += ["## Run times", "", "| runs | count | mean s | total s |",
                "|---|---|---|---|"]
        for k in sorted(by):
            out.append(f"| {k} | {len(by[k])} | {mean(by[k]):.0f} | "
                       f"{sum(by[k]):.0f} |")
        out.append("")
    if checks:
        out += ["## Targets", ""]
        out += [f"- {'PASS' if ok else 'MISS'}: {msg}" for ok, msg in checks]
        out.append("")
    made = plots(outdir, q, ref, lengths, ppds, med)
    out += [f"![{m}]({m})" for m in made]
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
