"""Semantic dedup on synthetic embeddings with planted near-duplicates: time, peak memory, precision, recall.

Each N runs in a fresh subprocess (so peak RSS is that run's own) on a lazy Dask frame that
generates its partitions on demand (float32, 20k rows each). Planted copies sit at an exact
cosine (default 0.995) to their original; eps defaults to 0.01 (threshold 0.99). The baseline
row is the smallest N: the table reports time per row relative to it (1.0 = linear scaling).

    PYTHONPATH=. python benchmarks/semdedup_planted.py --n 100000 300000
    PYTHONPATH=. python benchmarks/semdedup_planted.py --n 1000000
    PYTHONPATH=. python benchmarks/semdedup_planted.py --n 300000 --boundary-margin 0   # hard assignment
    PYTHONPATH=. python benchmarks/semdedup_planted.py --n 200000 1000000 --axes 8 --eps 0.02  # anisotropic
    PYTHONPATH=. python benchmarks/semdedup_planted.py --identical 50000   # one giant group of identical rows

``--axes 8`` gives every blob 8 principal directions (90% of its spread) and plants each copy
with half its offset along them: the directions k-means cuts along, so many more pairs straddle
a boundary than on isotropic blobs. ``--centers`` defaults to N/5000 there (five k-means clusters
per blob, as 200 centres give at 1M). CPU is user+system time of the run's process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(args: argparse.Namespace) -> dict:
    import dask
    import faiss

    from nemo_frames.dedup import semantic_duplicates
    from nemo_frames.dedup.synthetic import pair_scores, planted_embeddings, planted_pairs

    faiss.omp_set_num_threads(args.threads)
    if args.identical:
        ddf = _identical(args.single, args.d)
    else:
        centers = args.centers or (max(1, args.single // 5000) if args.axes else 200)
        ddf = planted_embeddings(args.single, d=args.d, cosine=args.cos, dup_fraction=args.dup_fraction,
                                 n_centers=centers, seed=0, axes=args.axes, aligned=args.aligned)
    t0, c0 = time.perf_counter(), _cpu()
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        table = semantic_duplicates(ddf, eps=args.eps, mode=args.mode, n_clusters=args.n_clusters,
                                    max_fit_rows=args.max_fit_rows, checkpoint_dir=args.checkpoint_dir,
                                    boundary_margin=args.boundary_margin, boundary_scale=args.boundary_scale)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    keys = ddf["key"].compute()
    truth = {(keys.iloc[0], k) for k in keys.iloc[1:]} if args.identical else planted_pairs(keys)
    precision, recall = (float(table.is_survivor.sum() == 1), float(len(table) == len(keys))) if args.identical else \
        pair_scores(table, truth)
    return {
        "n": len(keys), "wall_s": wall, "cpu_s": cpu,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "precision": precision, "recall": recall, "removed": int((~table.is_survivor).sum()),
        "clusters": table.attrs["n_clusters"], "split": table.attrs["split_clusters"],
        "boundary_rows": table.attrs["boundary_rows"], "margin": table.attrs["boundary_margin"],
        "scale": table.attrs["boundary_scale"], **table.attrs["timings"],
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _identical(n: int, d: int):
    """``n`` rows with one and the same embedding (the giant-group case)."""
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    from nemo_frames.backend import from_matrix

    v = np.random.default_rng(0).standard_normal((1, d)).astype(np.float32)
    pdf = pd.DataFrame({"key": [f"k{i:07d}" for i in range(n)]}).assign(embedding=from_matrix(np.repeat(v, n, 0)))
    return dd.from_pandas(pdf, npartitions=max(1, n // 20_000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--cos", type=float, default=0.995)
    ap.add_argument("--dup-fraction", type=float, default=0.05)
    ap.add_argument("--centers", type=int, default=None, help="default 200 (isotropic) or N/5000 (--axes)")
    ap.add_argument("--axes", type=int, default=0, help="principal directions per blob (0: isotropic)")
    ap.add_argument("--aligned", type=float, default=0.5, help="share of a copy's offset along the blob's axes")
    ap.add_argument("--identical", action="store_true", help="N identical rows instead of planted pairs")
    ap.add_argument("--mode", default="components", choices=["components", "nemo_curator"])
    ap.add_argument("--n-clusters", type=int, default=None)
    ap.add_argument("--max-fit-rows", type=int, default=200_000)
    ap.add_argument("--boundary-margin", type=float, default=None, help="default: the library's for --mode")
    ap.add_argument("--boundary-scale", type=float, default=None, help="default: the library's for --mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--single", str(n)] + [
            a for k, v in vars(args).items() if k not in ("n", "single") and v is not None and v is not False
            for a in ((f"--{k.replace('_', '-')}",) if v is True else (f"--{k.replace('_', '-')}", str(v)))
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"done n={n}: {rows[-1]}", file=sys.stderr)
    base = rows[0]["wall_s"] / rows[0]["n"]
    data = "identical rows" if args.identical else (
        f"planted pairs at cos {args.cos}, " + (f"anisotropic ({args.axes} axes, {args.aligned:.0%} of offsets along them)"
                                               if args.axes else "isotropic"))
    print(f"\nsemantic dedup, {data}, eps {args.eps}, d={args.d}, mode={args.mode}, "
          f"{args.threads} threads, boundary margin {rows[0]['margin']}, scale {rows[0]['scale']}\n")
    print("| N | clusters | boundary copies | wall (s) | CPU (s) | sample+fit / assign / pairs / merge (s) | "
          "time/row vs first | µs/row | peak RSS (GiB) | precision | recall | removed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        stages = (f"{r.get('sample_s', 0) + r.get('fit_s', 0):.0f} / {r.get('assign_s', 0):.0f} / "
                  f"{r.get('pairs_s', 0):.0f} / {r.get('merge_s', 0):.1f}")
        print(f"| {r['n']:,} | {r['clusters']} | {r['boundary_rows'] / r['n']:.0%} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} | "
              f"{stages} | "
              f"{r['wall_s'] / r['n'] / base:.2f} | {r['wall_s'] / r['n'] * 1e6:.0f} | "
              f"{r['peak_rss_gib']:.2f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['removed']:,} |")


if __name__ == "__main__":
    main()
