# quality_summary.awk -- the Markdown summary of bench/quality.sh.
#
#   awk -f quality_summary.awk -v variants="ref dense" -v flags_ref="..." \
#       quality_reference.tsv runs.tsv > summary.md
#
# runs.tsv columns: variant kind ppd seed epochs best_auc best_logloss
# bytes_per_id index_bytes_per_id params_per_id seconds train_bytes_per_id
# (ppd 0 = full; the last column is absent in older files).
# Means and standard deviations (ddof = 0, as numpy's default) over seeds,
# per variant, epochs, kind and P, beside the reference figures, then the
# issue's targets checked one by one, then bytes per ID per kind.
BEGIN { FS = "\t"; nv = split(variants, V, " ") }

FNR == 1 { file++ }
/^#/ || /^epochs\t/ || /^variant\t/ { next }

file == 1 {                     # reference: epochs kind ppd auc auc_std bce
    k = $1 SUBSEP $2 SUBSEP $3
    ref_auc[k] = $4; ref_std[k] = $5; ref_bce[k] = $6
    next
}

{                               # runs
    k = $1 SUBSEP $5 SUBSEP $2 SUBSEP $3
    n[k]++; s[k] += $6; ss[k] += $6 * $6; l[k] += $7
    bpi[$2 SUBSEP $3] = $8; ipi[$2 SUBSEP $3] = $9; ppi[$2 SUBSEP $3] = $10
    if (NF >= 12) tpi[$2 SUBSEP $3] = $12
    secs[$1] += $11
    if (!($5 in seen_e)) { seen_e[$5] = 1; E[++ne] = $5 }
    if ($3 > 0 && !($3 in seen_p)) { seen_p[$3] = 1; P[++np] = $3 }
}

function mean(k) { return n[k] ? s[k] / n[k] : -1 }
function sd(k,   m, v) { m = mean(k); v = ss[k] / n[k] - m * m; return v > 0 ? sqrt(v) : 0 }
function fmt(k) { return n[k] ? sprintf("%.3f ± %.3f", mean(k), sd(k)) : "–" }
function fmtm(k) { return n[k] ? sprintf("%.3f", mean(k)) : "–" }
function bce(k) { return n[k] ? sprintf("%.3f", l[k] / n[k]) : "–" }
function r(e, kind, p,   k) { k = e SUBSEP kind SUBSEP p; return (k in ref_auc) ? ref_auc[k] : "–" }
function rs(e, kind, p,   k) {
    k = e SUBSEP kind SUBSEP p
    if (!(k in ref_auc)) return "–"
    return ref_std[k] == "-" ? ref_auc[k] : ref_auc[k] " ± " ref_std[k]
}
function rb(e, kind, p,   k) { k = e SUBSEP kind SUBSEP p; return (k in ref_bce) && ref_bce[k] != "-" ? ref_bce[k] : "–" }
function tb(kind, p,   k) { k = kind SUBSEP p; return (k in tpi) ? sprintf("%.1f", tpi[k]) : "–" }
function verdict(ok) { return ok ? "**pass**" : "**FAIL**" }

END {
    # Sort epochs and budgets numerically (insertion sort: a handful).
    for (i = 2; i <= ne; i++) for (j = i; j > 1 && E[j] + 0 < E[j-1] + 0; j--) { t = E[j]; E[j] = E[j-1]; E[j-1] = t }
    for (i = 2; i <= np; i++) for (j = i; j > 1 && P[j] + 0 < P[j-1] + 0; j--) { t = P[j]; P[j] = P[j-1]; P[j-1] = t }

    for (vi = 1; vi <= nv; vi++) {
        v = V[vi]
        printf "## Variant `%s`\n\n", v
        if (("FLAGS_" v) in ENVIRON) printf "Trainer flags: `%s`\n\n", ENVIRON["FLAGS_" v]
        for (ei = 1; ei <= ne; ei++) {
            e = E[ei]
            kf = v SUBSEP e SUBSEP "full" SUBSEP 0
            printf "### %s epochs (best validation AUC, mean ± std over %d seeds)\n\n", e, n[v SUBSEP e SUBSEP "cqr" SUBSEP P[1]]
            printf "| P | params/ID | cqr AUC | ref CCE | cqr − ref | ce AUC | ref ce | hash AUC | ref hash | cqr BCE | ref BCE |\n"
            printf "|---|---|---|---|---|---|---|---|---|---|---|\n"
            for (pi = 1; pi <= np; pi++) {
                p = P[pi]
                kc = v SUBSEP e SUBSEP "cqr" SUBSEP p
                delta = (n[kc] && r(e, "cqr", p) != "–") ? sprintf("%+.3f", mean(kc) - r(e, "cqr", p)) : "–"
                printf "| %d | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p, ppi["cqr" SUBSEP p],
                    fmt(kc), rs(e, "cqr", p), delta,
                    fmt(v SUBSEP e SUBSEP "ce" SUBSEP p), r(e, "ce", p),
                    fmt(v SUBSEP e SUBSEP "hash" SUBSEP p), r(e, "hash", p),
                    bce(kc), rb(e, "cqr", p)
            }
            if (n[kf])
                printf "| full | %.2f | %s | %s | %+.3f | | | | | %s | %s |\n", ppi["full" SUBSEP 0],
                    fmt(kf), rs(e, "full", 0), mean(kf) - r(e, "full", 0), bce(kf), rb(e, "full", 0)
            printf "\n"
        }

        # The issue's targets, checked on this variant.
        printf "### Targets (variant `%s`)\n\n", v
        printf "| target | ours | verdict |\n|---|---|---|\n"
        split("32 128 512 2048", T10, " ")
        for (i = 1; i <= 4; i++) {
            k = v SUBSEP 10 SUBSEP "cqr" SUBSEP T10[i]
            if (!n[k]) continue
            want = r(10, "cqr", T10[i]) - 0.01
            printf "| 10 ep cqr P=%d ≥ %.3f (ref − 0.01) | %.3f | %s |\n", T10[i], want, mean(k), verdict(mean(k) >= want)
        }
        split("128 512 2048", T50, " "); split("0.770 0.807 0.824", W50, " ")
        for (i = 1; i <= 3; i++) {
            k = v SUBSEP 50 SUBSEP "cqr" SUBSEP T50[i]
            if (!n[k]) continue
            printf "| 50 ep cqr P=%d ≥ %s | %.3f | %s |\n", T50[i], W50[i], mean(k), verdict(mean(k) >= W50[i] + 0)
        }
        k = v SUBSEP 50 SUBSEP "full" SUBSEP 0
        if (n[k]) printf "| 50 ep full ≥ 0.825 | %.3f | %s |\n", mean(k), verdict(mean(k) >= 0.825)
        for (ei = 1; ei <= ne; ei++) {
            e = E[ei]
            split("128 512", TB, " ")
            for (i = 1; i <= 2; i++) {
                kc = v SUBSEP e SUBSEP "cqr" SUBSEP TB[i]
                kce = v SUBSEP e SUBSEP "ce" SUBSEP TB[i]
                kh = v SUBSEP e SUBSEP "hash" SUBSEP TB[i]
                if (!n[kc] || !n[kce] || !n[kh]) continue
                printf "| %d ep P=%d cqr > ce, cqr > hash | %+.3f vs ce (ref %+.3f), %+.3f vs hash (ref %+.3f) | %s |\n",
                    e, TB[i], mean(kc) - mean(kce), r(e, "cqr", TB[i]) - r(e, "ce", TB[i]),
                    mean(kc) - mean(kh), r(e, "cqr", TB[i]) - r(e, "hash", TB[i]),
                    verdict(mean(kc) > mean(kce) && mean(kc) > mean(kh))
            }
        }
        printf "\nTrainer time for this variant: %.0f s (sum over runs).\n\n", secs[v]
    }

    printf "## Memory: bytes per ID (both tables, users + items)\n\n"
    printf "Two axes. *Serving*: parameters plus the known-ID index (cqr: the learned\n"
    printf "pointers and the IDs they belong to; full: one float row per ID plus its\n"
    printf "index), per ID of the data set. *Training*: the same plus the optimizer\n"
    printf "state (Adam: two floats per parameter), per known ID; the x axis of\n"
    printf "auc_<E>ep_bytes.png. params/ID counts floats (the x axis of auc_<E>ep.png).\n\n"
    printf "| P | params/ID | hash B/ID | ce B/ID | cqr B/ID | of which cqr index | hash train B/ID | ce train B/ID | cqr train B/ID |\n"
    printf "|---|---|---|---|---|---|---|---|---|\n"
    for (pi = 1; pi <= np; pi++) {
        p = P[pi]
        printf "| %d | %.2f | %.1f | %.1f | %.1f | %.1f | %s | %s | %s |\n", p, ppi["cqr" SUBSEP p], bpi["hash" SUBSEP p],
            bpi["ce" SUBSEP p], bpi["cqr" SUBSEP p], ipi["cqr" SUBSEP p],
            tb("hash", p), tb("ce", p), tb("cqr", p)
    }
    if (("full" SUBSEP 0) in bpi)
        printf "| full | %.2f | | | %.1f (full) | %.1f | | | %s (full) |\n", ppi["full" SUBSEP 0], bpi["full" SUBSEP 0],
            ipi["full" SUBSEP 0], tb("full", 0)
    printf "\n"
}
