"""Bad input: each problem is a recorded row; the rest of the sample and of the shard are kept."""

from __future__ import annotations

import json

from nemo_frames.interleaved import (
    dropped_items,
    kept_items,
    read_interleaved_parquet,
    read_interleaved_webdataset,
    write_interleaved_parquet,
    write_interleaved_webdataset,
)
from nemo_frames.interleaved.reader import InterleavedReadConfig, read_shard
from tests.conftest import write_tar
from tests.interleaved.conftest import doc_json, jpeg, multi_tiff


def _shard(tmp_path, pics):
    names = sorted(pics)
    good = jpeg(pics[names[0]])
    members = [
        # 1. lists of different lengths: positions are unknowable → the whole sample is an error.
        ("lenmismatch.0.jpg", good),
        ("lenmismatch.json", doc_json(texts=["a", None, "c"], images=["lenmismatch.0.jpg", None])),
        # 2. a slot with both a text and an image, and an image the JSON names that is not in the tar.
        ("conflict.0.jpg", good),
        ("conflict.json", doc_json(texts=["text here", "kept text", None], images=["conflict.0.jpg", None, "conflict.9.jpg"])),
        # 3. a corrupt image (truncated JPEG bytes) next to a good one.
        ("corrupt.0.jpg", good[: len(good) // 3]),
        ("corrupt.1.jpg", good),
        ("corrupt.json", doc_json(texts=[None, None, "words"], images=["corrupt.0.jpg", "corrupt.1.jpg", None])),
        # 4. more images than TIFF frames: the last image's frame index is out of range.
        ("tif.tiff", multi_tiff([pics[names[1]], pics[names[2]]])),
        ("tif.json", doc_json(texts=["t", None, None, None], images=[None, "p0", "p1", "p2"])),
        # 5. a member no JSON references.
        ("stray.0.jpg", good),
        # 6. a fine sample after all of that.
        ("fine.0.jpg", good),
        ("fine.json", doc_json(texts=[None, "ok"], images=["fine.0.jpg", None])),
    ]
    return write_tar(tmp_path / "bad.tar", members)


def test_each_problem_recorded_rest_kept(tmp_path, pics):
    path = _shard(tmp_path, pics)
    df = read_interleaved_webdataset(str(path), materialize=True).compute()
    errs = dropped_items(df)
    by = {(s, p): e for s, p, e in zip(errs.sample_id, errs.nf_input_position, errs.nf_error, strict=True)}
    # 1: all rows of the sample are errors, with the reason.
    lm = df[df.sample_id == "lenmismatch"]
    assert (lm.nf_status == "error").all() and lm.nf_error.str.contains("must be parallel").all()
    # 2: the image sharing a slot with a text is an error, the text is kept; the missing member is an error.
    assert by[("conflict", 0)].startswith("sidecar_invalid:") and "both a text and an image" in by[("conflict", 0)]
    assert by[("conflict", 2)].startswith("missing_member:")
    assert kept_items(df[df.sample_id == "conflict"]).modality.tolist() == ["metadata", "text", "text"]
    # 4: frame 2 of a 2-frame TIFF: error, with materialize_error; frames 0 and 1 are fine.
    assert by[("tif", 3)].startswith("missing_member:") and "frame 2 does not exist" in by[("tif", 3)]
    tif = df[df.sample_id == "tif"].set_index("nf_input_position")
    assert tif.loc[3, "materialize_error"] and tif.loc[1, "nf_status"] == "ok" and tif.loc[2, "nf_status"] == "ok"
    # 5: the unreferenced member is recorded against no sample.
    stray = errs[errs.source_ref.str.contains("stray.0.jpg")]
    assert len(stray) == 1 and stray.sample_id.isna().all() and "not referenced" in stray.nf_error.iloc[0]
    # 6: the rest of the shard is read.
    assert (df[df.sample_id == "fine"].nf_status == "ok").all()
    # 3: the corrupt JPEG is read as bytes (not decoded at read) and fails when scored.
    from nemo_frames.interleaved import score_items

    scored = score_items(df, blur=True, qr=False)
    c = scored[scored.sample_id == "corrupt"].set_index("nf_input_position")
    assert c.loc[0, "nf_status"] == "error" and c.loc[0, "nf_error"].startswith("decode_error:")
    assert c.loc[1, "nf_status"] == "ok" and c.loc[1, "blur_score"] > 0


def test_without_materialize_errors_surface_at_write_and_are_recorded(tmp_path, pics):
    path = _shard(tmp_path, pics)
    lazy = read_interleaved_webdataset(str(path))
    assert (lazy.compute().set_index(["sample_id", "nf_input_position"]).loc[("tif", 3), "nf_status"] == "ok")
    r = write_interleaved_webdataset(lazy, str(tmp_path / "out"))
    assert r.stats["errors_by_code"]["missing_member"] >= 2  # conflict.9.jpg, then frame 2 found at write time
    drops = read_drops(tmp_path / "out")
    assert ("tif", 3) in set(zip(drops.sample_id, drops.nf_input_position, strict=True))
    back = read_interleaved_webdataset(str(tmp_path / "out"), materialize=True).compute()
    assert (back.nf_status == "ok").all()
    # The tif sample lost its third image: the two remaining content items follow the text, renumbered.
    assert back[back.sample_id == "tif"].position.tolist() == [-1, 0, 1, 2]
    assert set(back.sample_id) == {"conflict", "corrupt", "tif", "fine"}


def read_drops(d):
    import pandas as pd
    import pyarrow.parquet as pq

    return pd.concat([pq.read_table(f).to_pandas() for f in sorted(d.glob("*.drops.parquet"))])


def test_parquet_rows_all_keeps_the_ledger(tmp_path, pics):
    path = _shard(tmp_path, pics)
    write_interleaved_parquet(read_interleaved_webdataset(str(path)), str(tmp_path / "pq"), materialize=False, rows="all")
    back = read_interleaved_parquet(str(tmp_path / "pq")).compute()
    assert (back.nf_status == "error").sum() >= 5 and back.binary_content.isna().all()


def test_truncated_shard_keeps_samples_before_the_cut(tmp_path, pics):
    path = _shard(tmp_path, pics)
    raw = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: raw.find(b"fine.json") - 100])
    rows = read_shard(str(cut), InterleavedReadConfig(), {}, {}, None)
    shard_err = [r for r in rows if r["sample_id"] is None and "shard_truncated" in (r["nf_error"] or "")]
    assert len(shard_err) == 1
    assert {r["sample_id"] for r in rows if r["nf_status"] == "ok"} >= {"conflict", "tif"}
    assert json.loads(shard_err[0]["source_ref"])["path"].endswith("cut.tar")
