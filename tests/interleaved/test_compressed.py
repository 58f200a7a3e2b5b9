"""Interleaved (MINT-1T-style) shards compressed as .tar.gz / .tar.zst read like the plain tars."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pandas.testing as pdt

from nemo_frames.interleaved import materialize, read_interleaved_webdataset, write_interleaved_webdataset
from tests.interleaved.conftest import canon
from tests.io.test_compressed import zstd_bytes


def _compressed_copy(plain_dir: Path, out: Path) -> Path:
    """Shard 0 as .tar.gz (GNU tar when present, else Python's gzip), shard 1 as .tar.zst."""
    out.mkdir()
    shards = sorted(plain_dir.glob("*.tar"))
    first = out / (shards[0].stem + ".tar.gz")
    if shutil.which("gzip"):
        with open(first, "wb") as fh:
            subprocess.run(["gzip", "-c", "-n", str(shards[0])], stdout=fh, check=True)
    else:
        first.write_bytes(gzip.compress(shards[0].read_bytes()))
    (out / (shards[1].stem + ".tar.zst")).write_bytes(zstd_bytes(shards[1].read_bytes()))
    return out


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = canon(a), canon(b)
    assert list(a.columns) == list(b.columns)
    pdt.assert_frame_equal(a, b, check_dtype=True)


def test_compressed_interleaved_shards_read_and_materialize_like_plain(mint_shards, tmp_path):
    d, expected = mint_shards
    z = _compressed_copy(d, tmp_path / "z")
    plain = read_interleaved_webdataset(str(d), materialize=True).compute()
    eager = read_interleaved_webdataset(str(z), materialize=True).compute()
    assert set(eager.sample_id) == set(expected)
    assert (eager.nf_status == "ok").all(), eager.nf_error.dropna().tolist()
    _same(plain, eager)
    # Locators only, then materialize: one sequential pass over each compressed shard.
    lazy = read_interleaved_webdataset(str(z))
    assert lazy.compute().binary_content.isna().all()
    _same(plain, lazy.map_partitions(materialize, meta=lazy._meta).compute())
    # Written back as plain tars, which read back the same.
    r = write_interleaved_webdataset(read_interleaved_webdataset(str(z)), str(tmp_path / "out"))
    assert r.stats["samples_ok"] == len(expected)
    outs = sorted((tmp_path / "out").glob("*.tar"))
    assert outs and all(f.read_bytes()[257:262] == b"ustar" for f in outs)
    _same(plain, read_interleaved_webdataset(str(tmp_path / "out"), materialize=True).compute())


def test_truncated_compressed_interleaved_shard_is_recorded(mint_shards, tmp_path):
    d, _ = mint_shards
    z = _compressed_copy(d, tmp_path / "z")
    gz = next(z.glob("*.tar.gz"))
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    p = read_interleaved_webdataset(str(gz)).compute()
    errs = p[p.nf_status == "error"].nf_error.dropna().tolist()
    assert any(e.startswith("shard_truncated: compressed (gzip) stream") for e in errs), errs
