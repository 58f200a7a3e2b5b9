"""Perceptual duplicate search: our multi-index Hamming search vs imagededup's brute force.

Same hashes for both (uniform random 64-bit pHashes, 10% planted near-copies with 0–12 flipped
bits, a few blank-image zeros), threshold 10 (imagededup's default). Asserts both find exactly
the same pairs, then times ours alone at 1M.

    python benchmarks/phash_search.py                  # 20k vs imagededup, then 200k and 1M
    python benchmarks/phash_search.py --big            # skip the large runs
    python benchmarks/phash_search.py --n 0 --big 1000000   # 1M only

CPU is user+system seconds of this process during the step (> wall: both threads busy; imagededup
computes in worker processes, which this does not count); peak RSS is the process's high-water mark
after the step (so it includes earlier, smaller steps).
"""

from __future__ import annotations

import argparse
import os
import resource
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


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--big", type=int, nargs="*", default=[200_000, 1_000_000])
    ap.add_argument("--threshold", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from nemo_frames.dedup import hamming_pairs, perceptual_duplicates

    t = args.threshold
    rows = []
    t_ref = None

    def timed(label: str, n: int, fn) -> object:
        t0, c0 = time.perf_counter(), _cpu()
        out = fn()
        rows.append((label, n, time.perf_counter() - t0, _cpu() - c0, _rss_gib(), len(out)))
        return out

    if args.n:
        from imagededup.methods import PHash

        h = make_hashes(args.n)
        keys = [f"img{i:07d}" for i in range(len(h))]
        enc = {k: f"{int(v):016x}" for k, v in zip(keys, h, strict=True)}
        ref = timed("imagededup PHash.find_duplicates (brute_force_cython)", args.n, lambda: PHash(verbose=False).find_duplicates(
            encoding_map=enc, max_distance_threshold=t, search_method="brute_force_cython", num_dist_workers=args.threads))
        t_ref = rows[-1][2]
        ref_pairs = {tuple(sorted((a, b))) for a, ds in ref.items() for b in ds}
        rows[-1] = (*rows[-1][:-1], len(ref_pairs))  # its result is a dict per image: count the pairs
        for method in ("brute", "auto"):
            got = timed(f"nemo_frames hamming_pairs ({method})", args.n,
                        lambda m=method: hamming_pairs(h, threshold=t, method=m, n_threads=args.threads))
            pairs = {tuple(sorted((keys[i], keys[j]))) for i, j in zip(got["i"], got["j"], strict=True)}
            assert pairs == ref_pairs, f"{method}: {len(pairs ^ ref_pairs)} pairs differ from imagededup"
            if method == "auto":
                rows[-1] = (f"nemo_frames hamming_pairs, index {got.attrs['layout']}", *rows[-1][1:])
        df = pd.DataFrame({"key": keys, "phash": h})
        timed("nemo_frames perceptual_duplicates (search + groups + table)", args.n,
              lambda: perceptual_duplicates(df, threshold=t, n_threads=args.threads))

    for big in args.big:
        hb = make_hashes(big, seed=1)
        got = timed("nemo_frames hamming_pairs", big, lambda hb=hb: hamming_pairs(hb, threshold=t, n_threads=args.threads))
        rows[-1] = (f"nemo_frames hamming_pairs, index {got.attrs['layout']}", *rows[-1][1:])
        dfb = pd.DataFrame({"key": [f"img{i:07d}" for i in range(len(hb))], "phash": hb})
        timed("nemo_frames perceptual_duplicates (search + groups + table)", big,
              lambda dfb=dfb: perceptual_duplicates(dfb, threshold=t, n_threads=args.threads))

    print(f"\npHash duplicate search, Hamming ≤ {t}, {args.threads} threads/workers, cpu_count={os.cpu_count()}\n")
    print("| method | hashes | wall (s) | CPU (s) | peak RSS (GiB) | speed-up vs imagededup | pairs (rows for tables) |")
    print("|---|---|---|---|---|---|---|")
    for name, n, dt, cpu, rss, k in rows:
        ratio = f"{t_ref / dt:.0f}×" if t_ref and n == args.n else "—"
        print(f"| {name} | {n:,} | {dt:.2f} | {cpu:.1f} | {rss:.2f} | {ratio} | {k:,} |")
    if args.n:
        print("\nSame pairs as imagededup: asserted for both of our search methods.")

if __name__ == "__main__":
    main()
