"""Compressed shards vs the same plain tar: scan (headers + sidecars) and fetch of every image.

One shard of real scikit-image photos (JPEG, 512 px, distinct crops) is written as ``.tar``,
``.tar.gz`` (Python's gzip, level 6) and ``.tar.zst`` (pyarrow's zstd); each is scanned with
``read_webdataset`` and then every image fetched by locator with ``fetch_image_bytes`` (for the
compressed ones: one sequential decompression), rounds alternating, best of the rounds.

Usage::

    python benchmarks/compressed_shards.py                # 400 samples, 3 rounds
    python benchmarks/compressed_shards.py --samples 100 --rounds 2

Prints a markdown table: seconds of scan and fetch, MB/s of the decompressed tar, and the ratio
of each to the plain tar measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(d: Path, n: int) -> dict[str, Path]:
    import pyarrow as pa
    import skimage.data as sd
    from PIL import Image

    photos = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket()]
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for i in range(n):
            img = photos[i % len(photos)]
            y, x = rng.integers(0, 40, 2)
            out = io.BytesIO()
            Image.fromarray(img[y : y + 300, x : x + 300]).resize((512, 512)).save(out, "JPEG", quality=90)
            for name, data in ((f"s{i:05d}.jpg", out.getvalue()), (f"s{i:05d}.txt", f"photo {i}".encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    paths = {"tar": d / "a.tar", "tar.gz": d / "a.tar.gz", "tar.zst": d / "a.tar.zst"}
    paths["tar"].write_bytes(raw)
    import gzip

    paths["tar.gz"].write_bytes(gzip.compress(raw, compresslevel=6))
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as c:
        c.write(raw)
    paths["tar.zst"].write_bytes(sink.getvalue().to_pybytes())
    return paths


def main() -> None:
    import dask

    from nemo_frames.io.fetch import fetch_image_bytes
    from nemo_frames.io.webdataset import read_webdataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="synchronous"):
        paths = build(Path(tmp), args.samples)
        mb = paths["tar"].stat().st_size / 1e6
        best: dict[str, list[float]] = {k: [1e9, 1e9] for k in paths}
        for _ in range(args.rounds):
            for kind, p in paths.items():
                t0 = time.perf_counter()
                df = read_webdataset(str(p), fields=None).compute()
                t1 = time.perf_counter()
                got = fetch_image_bytes(df)
                t2 = time.perf_counter()
                assert (got.nf_status == "ok").all() and len(got) == args.samples
                best[kind] = [min(best[kind][0], t1 - t0), min(best[kind][1], t2 - t1)]
        print(f"{args.samples} samples, {mb:.1f} MB tar; best of {args.rounds} rounds, synchronous scheduler\n")
        print("| shard | file MB | scan s | scan ratio | fetch-all s | fetch ratio | fetch MB/s (decompressed) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = best["tar"]
        for kind, p in paths.items():
            s, f = best[kind]
            print(f"| .{kind} | {p.stat().st_size / 1e6:.1f} | {s:.3f} | {s / base[0]:.2f} | {f:.3f} | {f / base[1]:.2f} | "
                  f"{mb / f:.0f} |")


if __name__ == "__main__":
    main()
