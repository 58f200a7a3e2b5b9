"""Byte access by locator: coalesced range reads, as copies or as views."""

from __future__ import annotations

import pytest

from nemo_frames.io.fetch import fetch_members, read_ranges

from ._export_fixtures import make_dataset


def test_views_hold_the_same_bytes_as_copies(tmp_path):
    frames = make_dataset(tmp_path / "in", n_shards=2, per_shard=6)
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    copies, err_c = fetch_members(df)
    views, err_v = fetch_members(df, views=True)
    assert err_c == err_v == [None] * len(df)
    for c, v in zip(copies, views, strict=True):
        assert c.keys() == v.keys() and len(c) == 3
        for ext in c:
            assert isinstance(c[ext], bytes) and isinstance(v[ext], memoryview) and v[ext].readonly
            assert bytes(v[ext]) == c[ext]
    sub, _ = fetch_members(df, exts=["txt"], views=True)
    assert [bytes(s["txt"]) for s in sub] == [c["txt"] for c in copies]


def test_truncated_shard_gives_the_same_error_with_views(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(256)) * 4)
    ranges = [(10, 5), (1000, 10), (5000, 3)]
    with pytest.raises(OSError) as copy_err:
        read_ranges(str(p), ranges, max_gap=10)
    with pytest.raises(OSError) as view_err:
        read_ranges(str(p), ranges, max_gap=10, views=True)
    assert str(copy_err.value) == str(view_err.value) and "expected 3 bytes at offset 5000, found 0" in str(view_err.value)
    assert [bytes(v) for v in read_ranges(str(p), ranges[:2], views=True)] == read_ranges(str(p), ranges[:2])
