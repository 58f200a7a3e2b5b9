"""Shared fixtures: real photos from scikit-image, shard builders, the shared assets."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path | None:
    """``$NEMO_FRAMES_ASSETS``, else ``<project>/../shared/assets``, else None."""
    env = os.environ.get("NEMO_FRAMES_ASSETS")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "assets", Path("/work/shared/assets")]:
        if cand.is_dir():
            return cand
    return None


def assets_path(*parts: str) -> Path:
    """A path inside the shared assets, or skip the test saying why."""
    base = assets_dir()
    if base is None:
        pytest.skip("shared assets not found: set NEMO_FRAMES_ASSETS or put them at ../shared/assets")
    p = base.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset missing: {p}")
    return p


def photos() -> dict[str, np.ndarray]:
    """Real RGB photos that ship with scikit-image."""
    import skimage.data as d

    return {
        "astronaut": d.astronaut(),
        "chelsea": d.chelsea(),
        "coffee": d.coffee(),
        "rocket": d.rocket(),
        "motorcycle": d.stereo_motorcycle()[0],
        "hubble": d.hubble_deep_field(),
    }


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    for k, v in attrs.items():
        setattr(ti, k, v)
    tar.addfile(ti, io.BytesIO(data))


Sample = Sequence[tuple[str, bytes]]


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """A GNU tar with the given (name, bytes) members, in order."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members:
            add_member(t, name, data)
    return path


def sample_members(key: str, jpeg: bytes, caption: str, meta: dict | None = None) -> list[tuple[str, bytes]]:
    out = [(f"{key}.jpg", jpeg), (f"{key}.txt", caption.encode())]
    if meta is not None:
        out.append((f"{key}.json", json.dumps(meta).encode()))
    return out


@pytest.fixture(scope="session")
def jpegs() -> dict[str, bytes]:
    """Real photos as JPEG bytes (small enough for fast tests)."""
    import cv2

    out = {}
    for name, rgb in photos().items():
        h, w = rgb.shape[:2]
        s = 320 / max(h, w)
        small = cv2.resize(rgb, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        out[name] = encode(small, quality=90)
    return out


@pytest.fixture
def make_shards(tmp_path: Path, jpegs):
    """Build ``n_shards`` shards of ``per_shard`` samples each; return (dir, expected samples)."""

    def build(n_shards: int = 2, per_shard: int = 6, *, subdir: str = "in") -> tuple[Path, dict[str, dict]]:
        d = tmp_path / subdir
        d.mkdir(parents=True, exist_ok=True)
        names = sorted(jpegs)
        expected: dict[str, dict] = {}
        for s in range(n_shards):
            members = []
            for i in range(per_shard):
                key = f"s{s:02d}_{i:04d}"
                photo = names[(s * per_shard + i) % len(names)]
                meta = {"url": f"https://example.org/{key}.jpg", "width": 320, "aesthetic_hint": 0.5 + i, "nested": {"a": [1, 2]}}
                cap = f"a photo of {photo} number {i} — ünïcode ✓"
                members += sample_members(key, jpegs[photo], cap, meta)
                expected[key] = {"jpg": jpegs[photo], "caption": cap, "json": meta}
            write_tar(d / f"{s:05d}.tar", members)
        return d, expected

    return build
