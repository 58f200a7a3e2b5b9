"""Round trips WDS ↔ Parquet ↔ WDS keep every sample, position, text, image byte and passthrough value."""

from __future__ import annotations

import io
import json
import tarfile

import pandas as pd
import pandas.testing as pdt
import pytest

from nemo_frames.interleaved import (
    read_interleaved_parquet,
    read_interleaved_webdataset,
    validate,
    write_interleaved_parquet,
    write_interleaved_webdataset,
)
from nemo_frames.interleaved.reader import extract_frame
from nemo_frames.io.commit import ConfigMismatchError
from tests.interleaved.conftest import canon


def _wds(path, **kw) -> pd.DataFrame:
    return read_interleaved_webdataset(str(path), materialize=True, **kw).compute()


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # Parquet written for other readers holds the json column's keys as (nested) columns.
    from nemo_frames.interleaved.writer import expand_json_column

    a, b = canon(expand_json_column(a)), canon(expand_json_column(b))
    assert list(a.columns) == list(b.columns)
    pdt.assert_frame_equal(a, b, check_dtype=True)


def test_read_layouts(mint_shards):
    d, expected = mint_shards
    p = _wds(d)
    assert (p.nf_status == "ok").all(), p[p.nf_status != "ok"][["sample_id", "nf_error"]]
    assert validate(p) == []
    got = {
        sid: {"n_text": int((g.modality == "text").sum()), "n_image": int((g.modality == "image").sum())}
        for sid, g in p.groupby("sample_id")
    }
    assert got == expected
    # NeMo's case: texts at [0, 2] and TIFF frames 0, 1, 2 at [1, 3, 4].
    pdfa = p[p.sample_id == "pdfa"]
    assert pdfa[pdfa.modality == "text"].position.tolist() == [0, 2]
    imgs = pdfa[pdfa.modality == "image"]
    assert imgs.position.tolist() == [1, 3, 4]
    assert [json.loads(r)["frame_index"] for r in imgs.source_ref] == [0, 1, 2]
    tiff = (d / "00001.tar").read_bytes()
    with tarfile.open(d / "00001.tar") as t:
        raw = t.extractfile("pdfa.tiff").read()
    assert raw in tiff
    from PIL import Image

    for k, b in enumerate(imgs.binary_content):
        assert b == extract_frame(raw, k)
        with Image.open(io.BytesIO(raw)) as whole, Image.open(io.BytesIO(b)) as one:
            whole.seek(k)
            assert list(whole.getdata()) == list(one.getdata())
    # Passthrough: typed scalars on the metadata row, nested values in `json`.
    meta = p[(p.sample_id == "doc0") & (p.modality == "metadata")].iloc[0]
    assert (meta.url, meta.page, meta.score, bool(meta.flag)) == ("https://example.org/0", 3, 0.5, True)
    assert json.loads(meta.json) == {"nested": {"a": [1, 2]}}
    # Image bytes are the members' bytes, unchanged.
    with tarfile.open(d / "00000.tar") as t:
        assert p[(p.sample_id == "doc0") & (p.position == 2)].binary_content.iloc[0] == t.extractfile("doc0.2.png").read()


def test_locators_only_then_materialize_gives_same_bytes(mint_shards):
    from nemo_frames.interleaved import materialize

    d, _ = mint_shards
    lazy = read_interleaved_webdataset(str(d))
    assert lazy.compute().binary_content.isna().all()
    filled = lazy.map_partitions(materialize, meta=lazy._meta).compute()
    _assert_same(filled, _wds(d))


def test_wds_parquet_wds(mint_shards, tmp_path):
    d, _ = mint_shards
    t0 = _wds(d)
    write_interleaved_parquet(read_interleaved_webdataset(str(d)), str(tmp_path / "pq"))
    t1 = read_interleaved_parquet(str(tmp_path / "pq")).compute()
    _assert_same(t0, t1)
    r = write_interleaved_webdataset(read_interleaved_parquet(str(tmp_path / "pq")), str(tmp_path / "wds2"), samples_per_shard=2)
    assert r.stats["samples_ok"] == 6 and len(r.files) == 4  # 5 samples in shard 0 → 3 tars, 1 sample → 1 tar
    t2 = _wds(tmp_path / "wds2")
    _assert_same(t0, t2)


def test_parquet_wds_parquet(mint_shards, tmp_path):
    d, _ = mint_shards
    write_interleaved_parquet(read_interleaved_webdataset(str(d)), str(tmp_path / "pq1"))
    t1 = read_interleaved_parquet(str(tmp_path / "pq1")).compute()
    write_interleaved_webdataset(read_interleaved_parquet(str(tmp_path / "pq1")), str(tmp_path / "wds"))
    write_interleaved_parquet(read_interleaved_webdataset(str(tmp_path / "wds")), str(tmp_path / "pq2"))
    t2 = read_interleaved_parquet(str(tmp_path / "pq2")).compute()
    _assert_same(t1, t2)


def test_wds_wds_is_deterministic_and_keeps_ids(mint_shards, tmp_path):
    d, expected = mint_shards
    t0 = _wds(d)
    write_interleaved_webdataset(read_interleaved_webdataset(str(d)), str(tmp_path / "a"))
    write_interleaved_webdataset(read_interleaved_webdataset(str(d)), str(tmp_path / "b"))
    ta = _wds(tmp_path / "a")
    _assert_same(t0, ta)
    assert set(ta.sample_id) == set(expected)
    for f in sorted((tmp_path / "a").glob("*.tar")):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
        with tarfile.open(f) as t:
            assert all(m.mtime == 946684800 and m.uid == 0 for m in t.getmembers())
            names = t.getnames()
        assert all("/" not in n and n.split(".", 1)[0].count("%") == n.split(".", 1)[0].count("%") for n in names)
    # The escaped member stem has no dot and no slash; the id is back from the JSON.
    with tarfile.open(tmp_path / "a" / "00000-0000.tar") as t:
        stems = {n.split(".", 1)[0] for n in t.getnames()}
    assert "pdfs%2F%C3%BCn%C3%AF%20c%C3%B6d%C3%A9%3A42%2Ev1" in stems


def test_item_level_passthrough_round_trips(mint_shards, tmp_path):
    d, _ = mint_shards
    t = read_interleaved_webdataset(str(d)).compute()
    t["region"] = pd.Series([f"r{i}" if m == "image" else None for i, m in enumerate(t.modality)], dtype="string[pyarrow]")
    write_interleaved_webdataset(t, str(tmp_path / "w"))
    back = _wds(tmp_path / "w")
    src = t.set_index(["sample_id", "position"]).region
    got = back.set_index(["sample_id", "position"]).region
    assert got.reindex(src.index).tolist() == src.tolist()


def test_resume_skips_done_partitions_and_refuses_other_config(mint_shards, tmp_path):
    d, _ = mint_shards
    out = str(tmp_path / "pq")
    r1 = write_interleaved_parquet(read_interleaved_webdataset(str(d)), out)
    assert (r1.written, r1.skipped) == (2, 0)
    r2 = write_interleaved_parquet(read_interleaved_webdataset(str(d)), out)
    assert (r2.written, r2.skipped) == (0, 2)
    assert r2.stats["samples_ok"] == r1.stats["samples_ok"] == 6
    with pytest.raises(ConfigMismatchError):
        write_interleaved_parquet(read_interleaved_webdataset(str(d)), out, rows="all")


def test_partitioning_does_not_change_parquet_content(mint_shards, tmp_path):
    d, _ = mint_shards
    t = read_interleaved_webdataset(str(d)).compute()
    write_interleaved_parquet(t, str(tmp_path / "one"))
    _assert_same(read_interleaved_parquet(str(tmp_path / "one")).compute(), _wds(d))
