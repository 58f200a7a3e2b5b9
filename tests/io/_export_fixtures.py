"""Fixture builders for the export / commit tests: real tars of real photos, a moto S3 server.

The frames built here follow the read-side contract of ``read_webdataset`` (locators,
``nf_members`` in tar order, ledger columns), so export tests do not depend on the reader.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STRING = pd.StringDtype("pyarrow")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "coins")


@functools.lru_cache(maxsize=1)
def photos() -> list[np.ndarray]:
    """RGB uint8 photos shipped with scikit-image."""
    import skimage.data

    out = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        out.append(np.ascontiguousarray(a[..., :3]))
    return out


@functools.lru_cache(maxsize=512)
def jpeg(i: int, scale: int = 1) -> bytes:
    """The i-th distinct JPEG: a photo, cropped/flipped by ``i``, at a varying quality."""
    import simplejpeg

    ims = photos()
    a = ims[i % len(ims)]
    v = i // len(ims)
    h, w = a.shape[:2]
    a = a[(v * 7) % (h // 4):, (v * 11) % (w // 4):]
    if v % 2:
        a = a[:, ::-1]
    if scale > 1:
        a = np.concatenate([a] * scale, axis=1)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality=70 + (i % 25), colorspace="RGB")


def write_shard(path: Path, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write a WebDataset tar (default tarfile format) and return its rows with locators.

    Each sample is ``{"key": str, "jpg": bytes, "txt": str, "json": dict}``.
    """
    with tarfile.open(path, "w") as tf:
        for s in samples:
            for ext in ("jpg", "txt", "json"):
                if ext not in s:
                    continue
                v = s[ext]
                data = v if isinstance(v, bytes) else (json.dumps(v) if ext == "json" else v).encode("utf-8")
                ti = tarfile.TarInfo(f"{s['key']}.{ext}")
                ti.size = len(data)
                ti.mtime = 1700000000
                tf.addfile(ti, io.BytesIO(data))
    members: dict[str, dict[str, list[int]]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            head, _, base = m.name.rpartition("/")  # WebDataset rule: key ends at the basename's first dot
            stem, ext = base.split(".", 1)
            key = f"{head}/{stem}" if head else stem
            members.setdefault(key, {})[ext] = [m.offset_data, m.size]
    rows = []
    for s in samples:
        m = members[s["key"]]
        side = s.get("json", {})
        rows.append({
            "key": s["key"],
            "source": str(path),
            "image_member": f"{s['key']}.jpg",
            "image_offset": m["jpg"][0],
            "image_size": m["jpg"][1],
            "caption": s.get("txt"),
            "url": side.get("url"),
            "similarity": side.get("similarity"),
            "json": json.dumps({k: v for k, v in side.items() if k not in ("url", "similarity")}),
            "nf_members": json.dumps(m, separators=(",", ":")),
            "nf_status": "ok",
            "nf_error": None,
            "nf_reason": None,
        })
    return rows


def make_dataset(root: Path, n_shards: int = 3, per_shard: int = 10, *, start: int = 0) -> list[pd.DataFrame]:
    """Write ``n_shards`` tars under ``root`` and return one frame per shard (the read side's partitions)."""
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for s in range(n_shards):
        samples = []
        for j in range(per_shard):
            i = start + s * per_shard + j
            key = f"{i:06d}"
            if i % 13 == 5:
                key = f"odd.key/{i}"  # needs sanitising: dot and slash
            samples.append({
                "key": key,
                "jpg": jpeg(i),
                "txt": f"photo {i}: a {PHOTOS[i % len(PHOTOS)]} picture",
                "json": {"url": f"https://example.com/{i}.jpg", "similarity": 0.25 + (i % 7) / 100,
                         "exif": {"i": i}},
            })
        frames.append(pd.DataFrame(write_shard(root / f"{s:05d}.tar", samples)))
    return [typed(f) for f in frames]


def typed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in ("key", "source", "image_member", "caption", "url", "json", "nf_members", "nf_status", "nf_error",
              "nf_reason"):
        out[c] = out[c].astype(STRING)
    out["image_offset"] = out["image_offset"].astype("int64")
    out["image_size"] = out["image_size"].astype("int64")
    out["similarity"] = out["similarity"].astype("float64")
    return out


def mark_some(frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Mark every 5th row filtered and every 7th errored (ledger rows that export must not write)."""
    from nemo_frames.ledger import mark_error, mark_filtered
    from nemo_frames.schema import ErrorCode

    out = []
    for f in frames:
        ids = f["key"].str.extract(r"(\d+)$")[0].astype(int).to_numpy()
        f = mark_filtered(f, ids % 5 != 0, "test: every 5th")
        f = mark_error(f, ids % 7 == 3, ErrorCode.DECODE_ERROR, "test: every 7th")
        out.append(f)
    return out


def read_tar(path: Any, fs: Any = None) -> list[tuple[str, bytes]]:
    """(member name, bytes) of a tar, in order, checking the end-of-archive marker."""
    data = Path(path).read_bytes() if fs is None else fs.cat_file(path)
    assert data[-1024:] == b"\0" * 1024, f"{path}: no end-of-archive marker"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


class MotoS3:
    """A moto S3 server on 127.0.0.1 (random port) with one bucket, and s3fs options to reach it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.storage_options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "eu-west-1"},
            "skip_instance_cache": True,
        }
        self.fs = self.new_fs()
        try:
            self.fs.mkdir("nf-test")
        except FileExistsError:  # moto keeps its state per process, across servers
            pass

    def new_fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def stop(self) -> None:
        self.server.stop()
