"""Perceptual duplicate search: our multi-index Hamming search vs imagededup's brute force.

Same hashes for both (uniform random 64-bit pHashes, 10% planted near-copies with 0–12 flipped
bits, a few blank-image zeros), threshold 10 (imagededup's default). Asserts both find exactly
the same pairs, then times ours alone at 1M.

    python benchmarks/phash_search.py              # 20k vs imagededup, then 1M
    python benchmarks/phash_search.py --big 0      # skip the 1M run
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd


def make_hashes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = int(n * 0.9)
    h = rng.integers(0, 2**64 - 1, base, dtype=np.uint64, endpoint=True)
    n_near = n - base - 10
    src = rng.integers(0, base, n_near)
    flips = rng.integers(0, 13, n_near)
    masks = np.zeros(n_near, np.uint64)
    for k in range(1, 13):  # random masks with exactly k bits, vectorised per k
        sel = np.nonzero(flips == k)[0]
        bits = np.argsort(rng.random((len(sel), 64)), axis=1)[:, :k].astype(np.uint64)
        masks[sel] = np.bitwise_or.reduce(np.uint64(1) << bits, axis=1)
    return np.concatenate([h, h[src] ^ masks, np.zeros(10, np.uint64)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--threshold", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from nemo_frames.dedup import hamming_pairs, perceptual_duplicates

    t = args.threshold
    h = make_hashes(args.n)
    keys = [f"img{i:07d}" for i in range(len(h))]
    rows = []

    from imagededup.methods import PHash

    enc = {k: f"{int(v):016x}" for k, v in zip(keys, h, strict=True)}
    t0 = time.perf_counter()
    ref = PHash(verbose=False).find_duplicates(
        encoding_map=enc, max_distance_threshold=t, search_method="brute_force_cython", num_dist_workers=args.threads
    )
    t_ref = time.perf_counter() - t0
    ref_pairs = {tuple(sorted((a, b))) for a, ds in ref.items() for b in ds}
    rows.append(("imagededup PHash.find_duplicates (brute_force_cython)", args.n, t_ref, len(ref_pairs)))

    for method in ("brute", "auto"):
        t0 = time.perf_counter()
        got = hamming_pairs(h, threshold=t, method=method, n_threads=args.threads)
        dt = time.perf_counter() - t0
        pairs = {tuple(sorted((keys[i], keys[j]))) for i, j in zip(got["i"], got["j"], strict=True)}
        assert pairs == ref_pairs, f"{method}: {len(pairs ^ ref_pairs)} pairs differ from imagededup"
        label = "nemo_frames hamming_pairs, numpy all-pairs" if method == "brute" else f"nemo_frames hamming_pairs, index {got.attrs['layout']}"
        rows.append((label, args.n, dt, len(pairs)))
    df = pd.DataFrame({"key": keys, "phash": h})
    t0 = time.perf_counter()
    table = perceptual_duplicates(df, threshold=t, n_threads=args.threads)
    rows.append(("nemo_frames perceptual_duplicates (search + groups + table)", args.n, time.perf_counter() - t0, len(table)))

    if args.big:
        hb = make_hashes(args.big, seed=1)
        t0 = time.perf_counter()
        got = hamming_pairs(hb, threshold=t, n_threads=args.threads)
        rows.append((f"nemo_frames hamming_pairs, index {got.attrs['layout']}", args.big, time.perf_counter() - t0, len(got)))
        dfb = pd.DataFrame({"key": [f"img{i:07d}" for i in range(len(hb))], "phash": hb})
        t0 = time.perf_counter()
        table = perceptual_duplicates(dfb, threshold=t, n_threads=args.threads)
        rows.append(("nemo_frames perceptual_duplicates (search + groups + table)", args.big, time.perf_counter() - t0, len(table)))

    print(f"\npHash duplicate search, Hamming ≤ {t}, {args.threads} threads/workers, cpu_count={os.cpu_count()}\n")
    print("| method | hashes | time (s) | speed-up vs imagededup | pairs (rows for tables) |")
    print("|---|---|---|---|---|")
    for name, n, dt, k in rows:
        ratio = f"{t_ref / dt:.0f}×" if n == args.n else "—"
        print(f"| {name} | {n:,} | {dt:.2f} | {ratio} | {k:,} |")
    print("\nSame pairs as imagededup: asserted for both of our search methods.")


if __name__ == "__main__":
    main()
