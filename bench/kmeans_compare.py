#!/usr/bin/env python3
"""k-means baselines on the very points cqrps clusters.

`cqrps-engine-bench --mode kmeans --dump FILE` writes the points of a
cluster phase (chunk after chunk, n x w float32 each) and times the
engine's own k-means on them. This script runs faiss and scikit-learn
(Debian's python3-faiss and python3-sklearn) on the same points with the
same k, the same number of Lloyd iterations and the same thread count, and
prints one JSON line per library with the seconds per chunk and the final
inertia (mean squared distance to the nearest centroid, the engine's
definition), so perf.sh can print the speed ratios.

Only the first --run-chunks chunks are clustered (the chunks are alike;
scikit-learn is slow enough that all four would dominate the benchmark's
time); the figure compared is seconds per chunk.

Usage: kmeans_compare.py --points FILE --n N --w W --chunks C --k K
       --iters I [--threads T] [--run-chunks R] [--libs faiss,sklearn]
"""
import argparse
import json
import os
import sys
import time


def log(msg):
    print(f"kmeans-compare: {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--w", type=int, required=True)
    ap.add_argument("--chunks", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--iters", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run-chunks", type=int, default=1)
    ap.add_argument("--libs", default="faiss,sklearn")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    # Thread counts must be fixed before the libraries load their pools.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import numpy as np

    pts = np.fromfile(a.points, dtype=np.float32)
    want = a.n * a.w * a.chunks
    if pts.size != want:
        log(f"{a.points}: {pts.size} floats, expected {want}")
        return 1
    pts = pts.reshape(a.chunks, a.n, a.w)
    run = min(a.run_chunks, a.chunks)
    libs = [s for s in a.libs.split(",") if s]

    for lib in libs:
        secs, inertias, iters_done = [], [], []
        try:
            for i in range(run):
                x = np.ascontiguousarray(pts[i])
                if lib == "faiss":
                    import faiss
                    faiss.omp_set_num_threads(a.threads)
                    # No subsampling (the engine clusters every sample
                    # point) and no warnings about few points per centroid.
                    km = faiss.Kmeans(a.w, a.k, niter=a.iters, seed=a.seed + i,
                                      verbose=False,
                                      max_points_per_centroid=a.n,
                                      min_points_per_centroid=1)
                    t0 = time.perf_counter()
                    km.train(x)
                    secs.append(time.perf_counter() - t0)
                    d, _ = km.index.search(x, 1)
                    inertias.append(float(d.mean()))
                    iters_done.append(a.iters)
                    init = "random"
                elif lib == "sklearn":
                    from sklearn.cluster import KMeans
                    from threadpoolctl import threadpool_limits
                    # tol=0: Lloyd runs all iterations unless the labels
                    # stop changing (reported as iters_done).
                    km = KMeans(n_clusters=a.k, init="k-means++", n_init=1,
                                max_iter=a.iters, tol=0.0, algorithm="lloyd",
                                random_state=a.seed + i)
                    with threadpool_limits(limits=a.threads):
                        t0 = time.perf_counter()
                        km.fit(x)
                        secs.append(time.perf_counter() - t0)
                    inertias.append(float(km.inertia_) / a.n)
                    iters_done.append(int(km.n_iter_))
                    init = "k-means++"
                else:
                    log(f"unknown library {lib}")
                    return 2
                log(f"{lib} chunk {i + 1}/{run}: {secs[-1]:.3f} s, "
                    f"inertia {inertias[-1]:.5g}, {iters_done[-1]} iterations")
        except ImportError as e:
            log(f"{lib} unavailable: {e}")
            continue
        ver = "?"
        try:
            if lib == "faiss":
                import faiss
                ver = faiss.__version__
            else:
                import sklearn
                ver = sklearn.__version__
        except Exception:  # noqa: BLE001 -- the version is informative only
            pass
        print(json.dumps({
            "bench": "kmeans_compare", "lib": lib, "version": ver,
            "init": init, "n": a.n, "w": a.w, "k": a.k, "iters": a.iters,
            "iters_done": iters_done, "threads": a.threads,
            "chunks_run": run,
            "seconds_per_chunk": sum(secs) / len(secs),
            "inertia": sum(inertias) / len(inertias),
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
