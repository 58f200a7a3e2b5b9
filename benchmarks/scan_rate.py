"""Scan rate: tar headers + sidecars of 1,000-sample shards, ours against the standard library's.

The scan (``read_webdataset``) reads every tar header and the caption / JSON sidecars of every
sample, and leaves image bytes in place. This measures, in one process and on the same shards
(the ``benchmarks/scale.py`` corpus: small JPEGs, a caption, a ~1 KB JSON sidecar with a 64-d
vector per sample):

- ``tarfile + json`` (the baseline): ``tarfile`` lists the members, and the captions and
  sidecars are read and parsed with :func:`json.loads` — the standard library doing the scan's work;
- ``tarfile`` headers only: the floor of any ``tarfile`` based scan;
- ``iter_members``: our header reader alone (sidecars read, not parsed);
- ``scan_shard``: our scan of a shard into row dicts (keys, roles, checks, strict JSON);
- ``partition``: one shard into its pandas partition (what each scan task computes);
- then the whole scan on a local cluster (2 workers x 1 thread), one shard a partition and
  packed partitions (``partition_bytes``), as shards per second.

Usage::

    python benchmarks/scan_rate.py [--cache /work/nfscale] [--shards 40] [--cluster-shards 400]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _tarfile_json(path: Path) -> int:
    n = 0
    with tarfile.open(path) as t:
        for ti in t:
            if ti.name.endswith(".json"):
                json.loads(t.extractfile(ti).read())  # type: ignore[union-attr]
            elif ti.name.endswith(".txt"):
                t.extractfile(ti).read().decode("utf-8")  # type: ignore[union-attr]
            n += 1
    return n


def _tarfile_headers(path: Path) -> int:
    with tarfile.open(path) as t:
        return len(t.getmembers())


def _best(fn, paths: list[Path], repeat: int) -> float:
    """Best of ``repeat`` passes over every shard: seconds per shard."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return best / len(paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nf-scan-rate"), help="corpus cache (scale.py's layout)")
    ap.add_argument("--shards", type=int, default=20, help="shards for the single-process rows")
    ap.add_argument("--cluster-shards", type=int, default=200, help="shards for the local-cluster rows (0: skip)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)

    from scale import PER_SHARD, build_corpus

    from nemo_frames.io.tar import iter_members
    from nemo_frames.io.webdataset import ScanConfig, _scan_partition, _want, infer_fields, scan_shard

    n_all = max(a.shards, a.cluster_shards)
    root = build_corpus(a.cache, n_all * PER_SHARD)
    paths = [root / f"{i:05d}.tar" for i in range(a.shards)]
    for p in paths:  # the page cache, for every row alike
        p.read_bytes()
    fields = infer_fields(str(paths[0]), ScanConfig(), None)
    cfg = ScanConfig(fields=tuple(sorted(fields.items())))
    want = _want(cfg)

    def ours_members(p: Path) -> int:
        with open(p, "rb") as f:
            return sum(1 for _ in iter_members(f, want=want))

    rows = [
        ("tarfile + json (baseline)", _tarfile_json),
        ("tarfile, headers only", _tarfile_headers),
        ("iter_members (headers + sidecar bytes)", ours_members),
        ("scan_shard (rows)", lambda p: scan_shard(str(p), cfg, fields, None)),
        ("partition (pandas frame)", lambda p: _scan_partition([str(p)], cfg, fields, None)),
    ]
    per_shard = {name: _best(fn, paths, a.repeat) for name, fn in rows}
    base = per_shard["tarfile + json (baseline)"]
    print(f"\nscan of {a.shards} shards x {PER_SHARD} samples (3 members each), one process, best of {a.repeat}\n")
    print("| step | ms / shard | µs / sample | shards/s (1 core) | vs tarfile + json |")
    print("|---|---:|---:|---:|---:|")
    for name, sec in per_shard.items():
        print(f"| {name} | {sec * 1e3:.1f} | {sec * 1e6 / PER_SHARD:.1f} | {1 / sec:.0f} | {base / sec:.2f}x |")

    if a.cluster_shards:
        from nemo_frames.cluster import get_client
        from nemo_frames.io.webdataset import read_webdataset

        urls = f"{root}/{{00000..{a.cluster_shards - 1:05d}}}.tar"
        size = (root / "00000.tar").stat().st_size
        print(f"\nwhole scan of {a.cluster_shards} shards on a local cluster (2 workers x 1 thread)\n")
        print("| partitioning | partitions | seconds | shards/s |")
        print("|---|---:|---:|---:|")
        with get_client("local", n_workers=2, threads_per_worker=1) as client:
            client.compute(read_webdataset(str(paths[0])).map_partitions(len), sync=True)  # warm-up
            for label, pb in (("one shard a partition (default)", None), ("4 shards a partition", 4 * size + 1)):
                t0 = time.perf_counter()
                ddf = read_webdataset(urls, partition_bytes=pb)
                n = int(sum(client.compute(ddf.map_partitions(len), sync=True)))
                dt = time.perf_counter() - t0
                assert n == a.cluster_shards * PER_SHARD, n
                print(f"| {label} | {ddf.npartitions} | {dt:.1f} | {a.cluster_shards / dt:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
