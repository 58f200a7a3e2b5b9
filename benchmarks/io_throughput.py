"""IO throughput: scan rate of read_webdataset and export rate of write_webdataset vs a raw file copy.

Builds N shards x M real-photo samples (JPEGs of 100-200 KB from scikit-image photos, plus .txt and
.json members) in a temp dir, then, in one process:

- raw copy: ``shutil.copyfile`` of every input tar (the baseline; on Linux it is ``sendfile``, a copy
  inside the kernel that never brings the bytes to user space), the same with an fsync per file (what
  the commit protocol pays for durability), and a user-space copy (1 MiB ``read``/``write`` loop, the
  floor for any writer that must see the bytes: to hash them, or to lay out new tar headers);
- scan: ``read_webdataset(...).compute()`` (tar headers and sidecars, no image bytes);
- export: ``write_webdataset`` of the scanned table (persisted first, so the figure is the write path:
  fetch by locator, tar + Parquet + DALI index + stats, commit protocol with fsync).

Prints a markdown table with rates and ratios to the raw copy and to the raw copy with fsync (the export
fsyncs every file it publishes), and the fsync cost of each. Usage::

    python benchmarks/io_throughput.py [--shards 20] [--per-shard 200] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def photos_jpeg(target_kb: tuple[int, int] = (100, 200), n: int = 48) -> list[bytes]:
    """Distinct JPEGs of real photos, each 100-200 KB (cropped/flipped/resized variants)."""
    import cv2
    import simplejpeg
    import skimage.data as d

    base = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.hubble_deep_field(), d.immunohistochemistry()]
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        a = base[i % len(base)]
        v = i // len(base)
        h, w = a.shape[:2]
        a = a[(v * 13) % (h // 5):, (v * 17) % (w // 5):]
        if v % 2:
            a = a[:, ::-1]
        s = 900 / max(a.shape[:2])
        a = cv2.resize(np.ascontiguousarray(a), (int(a.shape[1] * s), int(a.shape[0] * s)), interpolation=cv2.INTER_AREA)
        for q in (92, 85, 75, 60, 95, 97):
            b = simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality=q, colorspace="RGB")
            if target_kb[0] * 1000 <= len(b) <= target_kb[1] * 1000:
                out.append(b)
                break
        i += 1
        if i > 50 * n:
            raise RuntimeError("could not make JPEGs of the target size")
    return out


def build(root: Path, shards: int, per_shard: int) -> list[Path]:
    jpegs = photos_jpeg()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        p = root / f"{s:05d}.tar"
        with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as tf:
            for j in range(per_shard):
                i = s * per_shard + j
                key = f"{i:08d}"
                side = {"url": f"https://example.com/{key}.jpg", "similarity": 0.3 + (i % 10) / 100,
                        "width": 900, "height": 700}
                for ext, data in (
                    ("jpg", jpegs[i % len(jpegs)]),
                    ("txt", f"a photo number {i}".encode()),
                    ("json", json.dumps(side).encode()),
                ):
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        paths.append(p)
    return paths


def raw_copy(paths: list[Path], dst: Path, *, fsync: bool) -> float:
    dst.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for p in paths:
        q = dst / p.name
        shutil.copyfile(p, q)
        if fsync:
            fd = os.open(q, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return time.perf_counter() - t


def userspace_copy(paths: list[Path], dst: Path) -> float:
    dst.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f, open(dst / p.name, "wb", buffering=0) as g:
            while chunk := f.read(1 << 20):
                g.write(chunk)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each measurement")
    ap.add_argument("--processes", action="store_true",
                    help="run scan and export on a LocalCluster of --workers processes (1 thread each) "
                         "instead of threads: the per-shard Python work then runs outside one GIL")
    args = ap.parse_args()

    import dask

    from nemo_frames.io.export import write_webdataset
    from nemo_frames.io.webdataset import read_webdataset

    tmp = Path(tempfile.mkdtemp(prefix="nf-io-bench-"))
    try:
        t0 = time.perf_counter()
        paths = build(tmp / "in", args.shards, args.per_shard)
        nbytes = sum(p.stat().st_size for p in paths)
        n = args.shards * args.per_shard
        print(f"built {args.shards} shards x {args.per_shard} samples, {nbytes / 1e6:.0f} MB "
              f"(avg sample {nbytes / n / 1e3:.0f} KB) in {time.perf_counter() - t0:.1f} s")
        res: dict[str, float] = {}
        import contextlib

        if args.processes:
            from nemo_frames.cluster import cluster

            ctx: contextlib.AbstractContextManager = cluster("local", n_workers=args.workers, threads_per_worker=1)
        else:
            ctx = dask.config.set(scheduler="threads", num_workers=args.workers)
        with ctx:
            for r in range(args.repeat):
                for fsync in (False, True):
                    d = tmp / f"copy{r}{int(fsync)}"
                    res_key = "copy+fsync" if fsync else "copy"
                    res[res_key] = min(res.get(res_key, 1e9), raw_copy(paths, d, fsync=fsync))
                    shutil.rmtree(d)
                d = tmp / f"ucopy{r}"
                res["ucopy"] = min(res.get("ucopy", 1e9), userspace_copy(paths, d))
                shutil.rmtree(d)
                t = time.perf_counter()
                table = read_webdataset([str(p) for p in paths]).persist()
                dask.compute(table.key.count())
                res["scan"] = min(res.get("scan", 1e9), time.perf_counter() - t)
                for fsync in (True, False):
                    out = tmp / f"out{r}{int(fsync)}"
                    t = time.perf_counter()
                    er = write_webdataset(table, str(out), samples_per_shard=args.per_shard, write_index=True,
                                          progress=False, fsync=fsync)
                    k = "export" if fsync else "export-nofsync"
                    res[k] = min(res.get(k, 1e9), time.perf_counter() - t)
                    assert er.samples == n, er
                    out_bytes = er.tar_bytes
                    shutil.rmtree(out)
        copy_mbs = nbytes / res["copy"] / 1e6
        sync_mbs = nbytes / res["copy+fsync"] / 1e6
        ex, exn = out_bytes / res["export"] / 1e6, out_bytes / res["export-nofsync"] / 1e6
        rows = [
            ("raw copy (shutil.copyfile) — baseline", res["copy"], copy_mbs, ""),
            ("raw copy + fsync per file", res["copy+fsync"], sync_mbs, ""),
            ("user-space copy (1 MiB read/write loop)", res["ucopy"], nbytes / res["ucopy"] / 1e6, ""),
            ("scan: read_webdataset + compute", res["scan"], nbytes / res["scan"] / 1e6,
             f"{args.shards / res['scan']:.1f} shards/s, {n / res['scan']:.0f} samples/s"),
            ("export: write_webdataset (tar+parquet+idx+stats, commit, fsync)", res["export"], ex,
             f"{n / res['export']:.0f} samples/s"),
            ("export, fsync=False", res["export-nofsync"], exn, f"{n / res['export-nofsync']:.0f} samples/s"),
        ]
        print(f"\n{args.shards} shards x {args.per_shard} samples, {nbytes / 1e6:.0f} MB, "
              f"{args.workers} {'processes' if args.processes else 'threads'}, best of {args.repeat}\n")
        user_mbs = nbytes / res["ucopy"] / 1e6
        print("| step | seconds | MB/s | rate | vs raw copy | vs raw copy + fsync | vs user-space copy |")
        print("|---|---:|---:|---|---:|---:|---:|")
        for name, sec, mbs, rate in rows:
            print(f"| {name} | {sec:.2f} | {mbs:.0f} | {rate} | {mbs / copy_mbs:.2f}x | {mbs / sync_mbs:.2f}x "
                  f"| {mbs / user_mbs:.2f}x |")
        print(f"\nfsync cost: export {res['export'] - res['export-nofsync']:+.2f} s (fsync=True minus fsync=False), "
              f"raw copy {res['copy+fsync'] - res['copy']:+.2f} s. Ratios are MB/s over MB/s; the export's MB/s "
              f"counts its output tars ({out_bytes / 1e6:.0f} MB), the copy's the input tars.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
