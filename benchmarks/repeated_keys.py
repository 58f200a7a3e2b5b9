"""Keys repeated across shards: the distributed count by key vs gathering every key on the driver.

Both run on the same sample-table-shaped Dask frame (``key``, ``source``, ``image_offset``,
``nf_status``; 1000 rows per partition, as many partitions as shards; 0.1 % of keys repeated in a
later shard), with the synchronous scheduler so the numbers are per core and not scheduling noise:

* ``distributed``: :func:`nemo_frames.io.keys.find_repeated_keys` + computing its (small) result:
  flat projection, hash shuffle by key, repeats only back to the driver;
* ``driver``: the earlier ``mark_duplicate_keys``: ``groupby(key).agg(count, min)`` computed, i.e.
  one row per distinct key gathered on the driver.

Usage::

    python benchmarks/repeated_keys.py                 # 100k, 300k, 1M rows
    python benchmarks/repeated_keys.py --rows 100000

Prints a markdown table: seconds, µs per row (flat = scales linearly), tasks per partition, and the
rows each method brings to the driver.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def frame(n: int, per_part: int = 1000):
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    keys = np.array([f"k{i:09d}" for i in range(n)], dtype=object)
    rep = rng.choice(np.arange(n // 2, n), size=max(1, n // 1000), replace=False)
    keys[rep] = keys[rep - n // 2]  # a key of the first half, again in a later shard
    shard = np.arange(n) // per_part
    df = pd.DataFrame({
        "key": pd.array(keys, dtype="string[pyarrow]"),
        "source": pd.array([f"s3://b/{s:06d}.tar" for s in shard], dtype="string[pyarrow]"),
        "image_offset": pd.array((np.arange(n) % per_part) * 4096 + 512, dtype="Int64"),
        "nf_status": pd.array(["ok"] * n, dtype="string[pyarrow]"),
    })
    shards = [f"s3://b/{s:06d}.tar" for s in range(int(shard.max()) + 1)]
    return dd.from_pandas(df, npartitions=len(shards), sort=False), shards, len(rep)


def driver_baseline(ddf):
    keys = ddf[["key"]].map_partitions(
        lambda df, partition_info=None: df.assign(_part=(partition_info or {}).get("number", 0)),
        meta=ddf._meta[["key"]].assign(_part=np.int64(0)),
    )
    counts = keys.groupby("key")["_part"].agg(["count", "min"]).compute()
    return counts[counts["count"] > 1], len(counts)


def main() -> None:
    import dask

    from nemo_frames.io.keys import find_repeated_keys

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    args = ap.parse_args()
    print("| rows | partitions | method | seconds | µs/row | tasks/partition | rows to driver | repeats found |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    with dask.config.set(scheduler="synchronous"):
        for n in args.rows:
            ddf, shards, planted = frame(n)
            ddf = ddf.persist()
            lazy = find_repeated_keys(ddf, shards=shards)
            tasks = len(lazy.__dask_graph__()) / ddf.npartitions
            t0 = time.perf_counter()
            rep = lazy.compute()
            t_dist = time.perf_counter() - t0
            t0 = time.perf_counter()
            dups, gathered = driver_baseline(ddf)
            t_drv = time.perf_counter() - t0
            assert len(rep) == planted == len(dups), (len(rep), planted, len(dups))
            for name, t, back in (("distributed", t_dist, len(rep)), ("driver (baseline)", t_drv, gathered)):
                print(f"| {n:,} | {ddf.npartitions} | {name} | {t:.2f} | {t / n * 1e6:.2f} | "
                      f"{tasks if name == 'distributed' else float('nan'):.1f} | {back:,} | {planted} |")
            print(f"| | | ratio distributed / driver | {t_dist / t_drv:.2f} | | | | |")


if __name__ == "__main__":
    main()
