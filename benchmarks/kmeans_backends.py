"""k-means backends for semantic dedup's fit: faiss vs scikit-learn, same data, same settings.

Fits ``nemo_frames.backend.kmeans_fit`` (seeded random init, fixed iterations) on unit-norm
planted embeddings and reports wall time and the share of planted pairs whose two rows land
in the same cluster (what dedup recall depends on).

    python benchmarks/kmeans_backends.py --n 50000 --k 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    from nemo_frames.backend import kmeans_fit, to_matrix
    from nemo_frames.dedup.semantic import _assign
    from nemo_frames.dedup.synthetic import planted_embeddings, planted_pairs

    pdf = planted_embeddings(args.n, d=args.d, seed=0).compute().reset_index(drop=True)
    x = to_matrix(pdf["embedding"])
    pos = {k: i for i, k in enumerate(pdf["key"].astype(str))}
    pairs = np.array([(pos[a], pos[b]) for a, b in planted_pairs(pdf["key"])])
    rows = []
    for backend in ("faiss", "sklearn"):
        t0 = time.perf_counter()
        c = kmeans_fit(x, args.k, backend=backend, max_iter=args.iters, seed=0)
        fit = time.perf_counter() - t0
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        lab = _assign(x, c)
        together = float((lab[pairs[:, 0]] == lab[pairs[:, 1]]).mean())
        sizes = np.bincount(lab, minlength=args.k)
        rows.append((backend, fit, together, sizes.max(), int((sizes == 0).sum())))
    base = rows[0][1]
    print(f"\nk-means fit, n={args.n:,} d={args.d} k={args.k} iterations={args.iters}\n")
    print("| backend | fit (s) | time vs faiss | planted pairs in one cluster | largest cluster | empty clusters |")
    print("|---|---|---|---|---|---|")
    for b, t, tog, mx, empty in rows:
        print(f"| {b} | {t:.2f} | {t / base:.2f} | {tog:.4f} | {mx} | {empty} |")


if __name__ == "__main__":
    main()
