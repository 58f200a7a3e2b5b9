"""Compressed shards (.tar.gz / .tgz / .tar.zst): streamed scan, fetch by decompressed locator, caps, export."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from nemo_frames.io.compressed import DecompressionLimit, open_decompressed, read_ranges_compressed
from nemo_frames.io.fetch import fetch_image_bytes, fetch_members
from nemo_frames.io.tar import TarTruncated, iter_members
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.pipeline import curate
from tests.conftest import add_member, sample_members, write_tar


def zstd_bytes(data: bytes) -> bytes:
    """zstd-compress with pyarrow's codec (the one the reader uses, but a different code path: the writer)."""
    out = pa.BufferOutputStream()
    with pa.CompressedOutputStream(out, "zstd") as c:
        c.write(data)
    return out.getvalue().to_pybytes()


def _members(jpegs: dict[str, bytes], prefix: str, n: int = 4) -> list[tuple[str, bytes]]:
    names = sorted(jpegs)
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        photo = names[i % len(names)]
        out += sample_members(f"{prefix}{i:03d}", jpegs[photo], f"{photo} {i}", {"url": f"https://x.org/{prefix}{i}", "n": i})
    return out


def _gnu_tar(src: Path, members: list[tuple[str, bytes]], out: Path, *flags: str) -> Path | None:
    """Write ``out`` with GNU tar (``tar <flags> out``) from files laid out in ``src``; None when tar cannot."""
    if shutil.which("tar") is None:
        return None
    src.mkdir(parents=True, exist_ok=True)
    for name, data in members:
        (src / name).write_bytes(data)
    r = subprocess.run(["tar", *flags, str(out), "-C", str(src), *[m for m, _ in members]], capture_output=True)
    return out if r.returncode == 0 else None


@pytest.fixture
def shards(tmp_path: Path, jpegs) -> dict[str, tuple[Path, list[tuple[str, bytes]]]]:
    """The same kind of shard written five ways: plain, Python gz, GNU tar czf, pyarrow zstd, GNU tar --zstd."""
    d = tmp_path / "in"
    d.mkdir()
    out: dict[str, tuple[Path, list[tuple[str, bytes]]]] = {}
    m = _members(jpegs, "p")
    out["plain"] = (write_tar(d / "00000.tar", m), m)
    m = _members(jpegs, "g")
    with tarfile.open(d / "00001.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as t:
        for name, data in m:
            add_member(t, name, data)
    out["py_gz"] = (d / "00001.tar.gz", m)
    m = _members(jpegs, "z")
    plain = write_tar(tmp_path / "z.tar", m)
    (d / "00003.tar.zst").write_bytes(zstd_bytes(plain.read_bytes()))
    out["py_zst"] = (d / "00003.tar.zst", m)
    m = _members(jpegs, "t")
    if _gnu_tar(tmp_path / "src_t", m, d / "00002.tgz", "-czf"):
        out["gnu_tgz"] = (d / "00002.tgz", m)
    m = _members(jpegs, "u")
    if shutil.which("zstd") and _gnu_tar(tmp_path / "src_u", m, d / "00004.tar.zst", "--zstd", "-cf"):
        out["gnu_zst"] = (d / "00004.tar.zst", m)
    return out


def test_every_layout_scans_and_fetches_the_original_bytes(shards):
    d = next(iter(shards.values()))[0].parent
    assert {"py_gz", "py_zst"} <= set(shards)
    df = read_webdataset(str(d))
    assert df.npartitions == len(shards)  # the directory listing finds compressed shards too
    p = df.compute()
    assert (p.nf_status == "ok").all(), p.nf_error.dropna().tolist()
    for kind, (path, members) in shards.items():
        rows = p[p.source == str(path)]
        want = {n[: -len(".jpg")]: b for n, b in members if n.endswith(".jpg")}
        assert sorted(rows.key) == sorted(want), kind
        assert sorted(rows.caption) == sorted(b.decode() for n, b in members if n.endswith(".txt")), kind
        # Locators point into the decompressed tar; fetch streams it once and returns the original bytes.
        got = fetch_image_bytes(rows.reset_index(drop=True))
        assert dict(zip(got.key, got.image_bytes, strict=True)) == want, kind
        mem, errs = fetch_members(rows.reset_index(drop=True))
        assert errs == [None] * len(rows)
        assert all(set(x) == {"jpg", "txt", "json"} for x in mem), kind
    gnu = [k for k in shards if k.startswith("gnu")]
    print("GNU tar shards checked:", gnu)


def test_locators_are_offsets_in_the_decompressed_tar(shards):
    path, _ = shards["py_gz"]
    raw = gzip.decompress(path.read_bytes())
    p = read_webdataset(str(path)).compute()
    for off, size, member in zip(p.image_offset, p.image_size, p.image_member, strict=True):
        with tarfile.open(fileobj=io.BytesIO(raw)) as t:
            assert raw[off : off + size] == t.extractfile(member).read()
    assert read_ranges_compressed(str(path), [(int(p.image_offset[1]), 4), (int(p.image_offset[0]), 2)]) == [
        raw[int(p.image_offset[1]) : int(p.image_offset[1]) + 4], raw[int(p.image_offset[0]) : int(p.image_offset[0]) + 2]
    ]


def test_glob_of_compressed_shards(shards):
    d = shards["py_gz"][0].parent
    p = read_webdataset(str(d / "*.tar.*")).compute()
    assert set(p.source) == {str(v[0]) for k, v in shards.items() if str(v[0]).endswith((".tar.gz", ".tar.zst"))}


@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_truncated_tar_gz_is_recorded(shards, tmp_path, cut):
    path, members = shards["py_gz"]
    data = path.read_bytes()
    bad = tmp_path / f"cut-{cut}.tar.gz"
    # half: inside the deflate stream; trailer: the tar is whole but the gzip CRC/size trailer is gone.
    bad.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-6])
    p = read_webdataset(str(bad)).compute()
    shard_rows = p[p.key.isna()]
    assert len(shard_rows) == 1
    err = shard_rows.nf_error.iloc[0]
    assert err.startswith("shard_truncated: compressed (gzip) stream"), err
    ok = p[p.nf_status == "ok"]
    if cut == "trailer":
        assert len(ok) == len(members) // 3  # every sample was read before the cut
    else:
        assert 0 < len(ok) < len(members) // 3


def _bomb(path: Path, size: int) -> Path:
    """A .tar.gz with a real sample and one member of ``size`` zero bytes (compresses ~1000×)."""
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT, compresslevel=1) as t:
        for k in ("ok0", "ok1"):
            add_member(t, f"{k}.txt", b"fine")
            add_member(t, f"{k}.jpg", b"\xff\xd8 not really")

        class Zeros(io.RawIOBase):
            def __init__(self, n):
                self.left = n

            def readable(self):
                return True

            def readinto(self, b):
                k = min(len(b), self.left)
                b[:k] = bytes(k)
                self.left -= k
                return k

        ti = tarfile.TarInfo("bomb.jpg")
        ti.size = size
        t.addfile(ti, io.BufferedReader(Zeros(size)))
    return path


def test_decompression_bomb_hits_the_ratio_cap_with_defaults(tmp_path):
    path = _bomb(tmp_path / "bomb.tar.gz", 200 << 20)
    assert path.stat().st_size < 1 << 20
    p = read_webdataset(str(path)).compute()
    errs = p[p.nf_status == "error"].nf_error.tolist()
    assert any(e.startswith("decompression_bomb: ") and "max_ratio=200" in e for e in errs), errs
    # Samples read whole before the cap stay; the one being read when it hit may lack members: recorded.
    assert p[p.key == "ok0"].nf_status.iloc[0] == "ok"
    assert p[p.key == "ok1"].nf_error.iloc[0].startswith("decompression_bomb: the cap was reached in or right after")


def test_decompression_total_cap(tmp_path):
    path = _bomb(tmp_path / "big.tar.gz", 3 << 20)
    p = read_webdataset(str(path), max_decompressed=1 << 20).compute()
    assert p[p.key.isna()].nf_error.iloc[0].startswith("decompression_bomb: ")
    assert "max_decompressed=1048576" in p[p.key.isna()].nf_error.iloc[0]
    with pytest.raises(DecompressionLimit), open_decompressed(str(path), max_total=1 << 20) as f:
        list(iter_members(f))
    with pytest.raises(TarTruncated), open_decompressed(str(path)) as f:
        f.raw.f.seek(100)  # not a gzip stream from here: corrupt data is reported, not read as garbage
        f.read(10)


def test_curate_exports_uncompressed_tars_from_compressed_shards(shards, tmp_path, jpegs):
    d = shards["py_gz"][0].parent
    # Exact dedup on: the same photos appear in every shard, so only one copy of each survives.
    cfg = {
        "input": {"urls": str(d)},
        "output": str(tmp_path / "out"),
        "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 2}},
        "score": {"clip": None, "qr": False},
        "dedup": {"exact": True},
        "export": {"samples_per_shard": 100},
        "report": {"enabled": True, "per_grid": 4},
    }
    r = curate(cfg, progress=False)
    assert r.summary["errors"] == 0
    assert r.summary["kept"] == len(set(jpegs) & {n for n in sorted(jpegs)[:4]})
    outs = sorted(Path(r.export.path).glob("*.tar"))
    assert outs
    seen = {}
    for tar in outs:
        assert tar.read_bytes()[257:262] == b"ustar"  # a plain (GNU) tar, not gzip/zstd
        with tarfile.open(tar, "r:") as t:
            for m in t.getmembers():
                seen[m.name] = t.extractfile(m).read()
    kept_jpgs = {n: b for n, b in seen.items() if n.endswith(".jpg")}
    assert sorted(kept_jpgs.values()) == sorted(jpegs[n] for n in sorted(jpegs)[:4])
    assert Path(r.report).is_file()
