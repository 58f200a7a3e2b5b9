"""The scan pass on real-photo shards, another tool's shard, and every bad-input kind."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from nemo_frames.io.fetch import fetch_image_bytes, fetch_members
from nemo_frames.io.parquet import read_parquet, write_parquet
from nemo_frames.io.urls import NoShardsFound
from nemo_frames.io.webdataset import ScanConfig, ShardScanError, read_webdataset, scan_shard
from tests.conftest import add_member, assets_path, sample_members, write_tar


def test_scan_reads_every_sample_with_locators(make_shards):
    d, expected = make_shards(3, 5)
    df = read_webdataset(str(d / "{00000..00002}.tar"))
    assert df.npartitions == 3
    p = df.compute()
    assert set(p.key) == set(expected)
    assert (p.nf_status == "ok").all()
    # Sidecar scalars become typed columns; nested values stay in `json`.
    assert str(p.dtypes["url"]) == "string"
    assert p.dtypes["aesthetic_hint"] == "float64"
    row = p.set_index("key").loc["s01_0003"]
    assert row.caption == expected["s01_0003"]["caption"]
    # `width` is a reserved column (set after decode), so the sidecar's value stays in `json`.
    assert json.loads(row.json) == {"nested": {"a": [1, 2]}, "width": 320}
    got = fetch_image_bytes(p)
    for k, b in zip(got.key, got.image_bytes, strict=True):
        assert b == expected[k]["jpg"]


def test_globs_directories_and_missing(make_shards, tmp_path):
    d, _expected = make_shards(2, 3)
    assert len(read_webdataset(str(d / "*.tar")).compute()) == 6
    assert len(read_webdataset(d).compute()) == 6
    with pytest.raises(NoShardsFound, match="no shard matched"):
        read_webdataset(str(tmp_path / "nope" / "*.tar"))


def test_partition_bytes_packs_small_shards(make_shards):
    d, _ = make_shards(4, 2)
    df = read_webdataset(d, partition_bytes=10**9)
    assert df.npartitions == 1 and len(df.compute()) == 8


def test_shard_written_by_another_tool():
    tar = assets_path("images-nemo-curator", "00000.tar")
    p = read_webdataset(str(tar)).compute()
    assert (p.nf_status == "ok").all() and len(p) >= 1
    assert p.caption.notna().all()
    b = fetch_image_bytes(p).image_bytes.iloc[0]
    assert b[:2] == b"\xff\xd8"


def test_parquet_round_trip_keeps_every_column(make_shards, tmp_path):
    import numpy as np

    from nemo_frames.backend import from_matrix, to_matrix

    d, _ = make_shards(2, 4)
    df = read_webdataset(d)

    def add(p):
        rng = np.random.default_rng(len(p))
        e = rng.standard_normal((len(p), 8)).astype("f4")
        return p.assign(
            embedding=from_matrix(e, index=p.index),
            # UInt64 as scoring makes it: a null and values over 2**53 must come back exact.
            phash=pd.Series(pd.array([None, *(np.arange(1, len(p), dtype=np.uint64) * np.uint64(2**60 + 1))],
                                     dtype="UInt64")[: len(p)], index=p.index),
            width=pd.Series(320, index=p.index, dtype="int32"),
        )

    meta = add(df._meta)
    df = df.map_partitions(add, meta=meta)
    a = df.compute()
    write_parquet(df, tmp_path / "pq")
    b = read_parquet(tmp_path / "pq").compute()
    assert list(b.columns) == list(a.columns)
    assert b.dtypes.to_dict() == a.dtypes.to_dict()
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert (to_matrix(a.embedding) == to_matrix(b.embedding)).all()
    pd.testing.assert_frame_equal(a.drop(columns="embedding"), b.drop(columns="embedding"))


# --------------------------------------------------------------------------- bad input
def _scan(path: Path, **kw) -> pd.DataFrame:
    return read_webdataset(str(path), **kw).compute().reset_index(drop=True)


def _codes(p: pd.DataFrame) -> dict:
    return {k: (s, (e or "").split(":")[0]) for k, s, e in zip(p.key, p.nf_status, p.nf_error.astype(object).where(p.nf_error.notna(), None), strict=True)}


def _good(jpegs, key, photo="coffee"):
    return sample_members(key, jpegs[photo], f"caption {key}")


@pytest.fixture
def shard_with(tmp_path, jpegs):
    def build(*middle, name="bad.tar"):
        members = _good(jpegs, "good_a", "astronaut")
        for m in middle:
            members += m
        members += _good(jpegs, "good_z", "chelsea")
        return write_tar(tmp_path / name, members)

    return build


def _assert_goods_kept(p, jpegs):
    goods = p[p.key.isin(["good_a", "good_z"])]
    assert (goods.nf_status == "ok").all() and len(goods) == 2
    b = fetch_image_bytes(goods)
    assert b.image_bytes.tolist() == [jpegs["astronaut"], jpegs["chelsea"]]


def test_missing_image_member(shard_with, jpegs):
    p = _scan(shard_with([("lonely.txt", b"no image here")]))
    assert _codes(p)["lonely"] == ("error", "missing_member")
    _assert_goods_kept(p, jpegs)


def test_duplicate_key_non_adjacent_and_repeated_member(shard_with, jpegs, tmp_path):
    members = _good(jpegs, "dup") + _good(jpegs, "mid") + _good(jpegs, "dup", "rocket")
    p = _scan(shard_with(members))
    dup = p[p.key == "dup"]
    assert dup.nf_status.tolist() == ["ok", "error"]
    assert dup.nf_error.iloc[1].startswith("duplicate_key")
    p2 = _scan(shard_with([("twice.jpg", jpegs["coffee"]), ("twice.jpg", jpegs["rocket"])], name="b2.tar"))
    assert _codes(p2)["twice"] == ("error", "duplicate_key")
    _assert_goods_kept(p2, jpegs)


def test_duplicate_key_across_shards(make_shards, tmp_path, jpegs):
    d, _ = make_shards(1, 3)
    write_tar(d / "00001.tar", _good(jpegs, "s00_0001") + _good(jpegs, "fresh"))
    p = read_webdataset(d, check_keys="dataset").compute()
    rows = p[p.key == "s00_0001"]
    assert sorted(rows.nf_status) == ["error", "ok"]
    assert rows[rows.nf_status == "ok"].source.iloc[0].endswith("00000.tar")
    assert (p[p.key != "s00_0001"].nf_status == "ok").all()


def test_keys_with_dots_and_unsafe_names(shard_with, jpegs):
    members = [
        ("img.v2.jpg", jpegs["rocket"]),
        ("img.v2.txt", b"dotted"),
        ("../escape.jpg", jpegs["rocket"]),
        ("/abs/path.jpg", jpegs["rocket"]),
        ("ctrl\x01name.jpg", jpegs["rocket"]),
        ("noextension", b"x"),
        ("spaces and ünïcode.jpg", jpegs["rocket"]),
    ]
    p = _scan(shard_with(members))
    c = _codes(p)
    assert c["img"] == ("ok", "") and p.set_index("key").loc["img"].caption == "dotted"
    assert c["../escape"] == ("error", "unsafe_member")
    assert c["/abs/path"] == ("error", "unsafe_member")
    assert c["ctrl\x01name"] == ("error", "unsafe_member")
    assert c["noextension"] == ("error", "bad_key")
    assert c["spaces and ünïcode"] == ("ok", "")
    _assert_goods_kept(p, jpegs)


def test_member_over_size_cap(shard_with, jpegs):
    cap = max(len(b) for b in jpegs.values())
    big = [("big.jpg", jpegs["hubble"] + b"\0" * cap), ("big.txt", b"too big")]
    p = _scan(shard_with(big), max_member_size=cap)
    assert _codes(p)["big"] == ("error", "member_too_large")
    _assert_goods_kept(p, jpegs)
    p = _scan(shard_with([("hugecap.jpg", jpegs["coffee"]), ("hugecap.txt", b"x" * 5000)]), max_sidecar_size=4096)
    assert _codes(p)["hugecap"] == ("error", "member_too_large")


def test_undecodable_sidecars(shard_with, jpegs):
    members = [
        ("badjson.jpg", jpegs["coffee"]),
        ("badjson.json", b"{not json"),
        ("listjson.jpg", jpegs["coffee"]),
        ("listjson.json", b"[1, 2]"),
        ("latin.jpg", jpegs["coffee"]),
        ("latin.txt", "café".encode("latin-1")),
    ]
    p = _scan(shard_with(members))
    c = _codes(p)
    assert c["badjson"] == ("error", "sidecar_invalid")
    assert c["listjson"] == ("error", "sidecar_invalid")
    assert c["latin"] == ("error", "caption_invalid")
    _assert_goods_kept(p, jpegs)


class _Boom:
    def __reduce__(self):
        return (Path("/tmp/nf_pickle_was_executed").write_text, ("pwned",))


def test_pickled_members_are_never_unpickled(shard_with, jpegs):
    marker = Path("/tmp/nf_pickle_was_executed")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps(_Boom())
    members = [("pk.jpg", jpegs["coffee"]), ("pk.pkl", payload), ("pk.pth", payload), ("pk.pyd", payload)]
    p = _scan(shard_with(members))
    assert _codes(p)["pk"] == ("ok", "")
    got, errs = fetch_members(p[p.key == "pk"])
    assert got[0]["pkl"] == payload and errs == [None]
    assert not marker.exists()
    _assert_goods_kept(p, jpegs)


def test_symlink_and_directory_members(tmp_path, jpegs):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for n, b in _good(jpegs, "good_a", "astronaut"):
            add_member(t, n, b)
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        s = tarfile.TarInfo("evil.jpg")
        s.type = tarfile.SYMTYPE
        s.linkname = "/etc/passwd"
        t.addfile(s)
        h = tarfile.TarInfo("hard.jpg")
        h.type = tarfile.LNKTYPE
        h.linkname = "good_a.jpg"
        t.addfile(h)
        for n, b in _good(jpegs, "good_z", "chelsea"):
            add_member(t, n, b)
    p = _scan(path)
    c = _codes(p)
    assert c["evil"] == ("error", "unsafe_member") and c["hard"] == ("error", "unsafe_member")
    assert "somedir" not in c
    _assert_goods_kept(p, jpegs)


def test_empty_and_non_tar_shards(tmp_path, make_shards):
    d, expected = make_shards(1, 3)
    (d / "00001.tar").write_bytes(b"")
    (d / "00002.tar").write_bytes(b"this is not a tar file at all" * 40)
    (d / "00003.tar").write_bytes(b"\0" * 1024)  # a valid, empty tar
    p = read_webdataset(d).compute()
    errs = p[p.nf_status == "error"]
    by_source = {Path(s).name: e.split(":")[0] for s, e in zip(errs.source, errs.nf_error, strict=True)}
    assert by_source == {"00001.tar": "shard_truncated", "00002.tar": "not_a_tar"}
    assert set(p[p.nf_status == "ok"].key) == set(expected)


def test_on_error_raise(shard_with, jpegs):
    path = shard_with([("lonely.txt", b"x")])
    with pytest.raises(ShardScanError, match="missing_member"):
        _scan(path, on_error="raise")


def test_every_byte_truncation_is_never_silent(tmp_path, jpegs):
    import cv2

    from tests.conftest import encode, photos

    tiny = {k: encode(cv2.resize(v, (24, 16))) for k, v in list(photos().items())[:3]}
    members = []
    for i, b in enumerate(tiny.values()):
        members += sample_members(f"k{i}", b, f"cap {i}")
    full = write_tar(tmp_path / "full.tar", members).read_bytes()
    truth = {f"k{i}": b for i, b in enumerate(tiny.values())}
    cut_path = tmp_path / "cut.tar"
    silent = 0
    for n in range(len(full)):
        cut_path.write_bytes(full[:n])
        rows = scan_shard(str(cut_path), ScanConfig(), {}, None)
        p = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["key", "nf_status"]).astype(
            {"key": "string", "nf_status": "string"}
        )
        shard_err = p.key.isna() & (p.nf_status == "error")
        ok = p[p.nf_status == "ok"]
        # Every ok sample is intact...
        for k, off, size in zip(ok.key, ok.image_offset, ok.image_size, strict=True):
            off, size = int(off), int(size)
            assert full[off : off + size] == truth[k] and off + size <= n, n
        # ...and whenever a sample is missing, the shard carries a recorded error.
        if len(ok) < len(truth) and not shard_err.any():
            silent += 1
    assert silent == 0
