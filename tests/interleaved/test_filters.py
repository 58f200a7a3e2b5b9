"""Filter semantics on given scores: boundaries, renumbering, empty samples, partitioning; the fused scoring pass."""

from __future__ import annotations

import math

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from nemo_frames.interleaved import (
    blur_filter,
    clip_alignment_filter,
    dropped_items,
    image_text_ratio_filter,
    kept_items,
    qr_filter,
    read_interleaved_webdataset,
    score_items,
    validate,
)
from nemo_frames.backend import from_matrix


def items(rows: list[tuple], **cols) -> pd.DataFrame:
    """rows: (sample_id, position, modality, text)."""
    df = pd.DataFrame(rows, columns=["sample_id", "position", "modality", "text_content"])
    for k, v in cols.items():
        df[k] = v
    return df


def ok_view(df: pd.DataFrame) -> list[tuple]:
    k = kept_items(df).sort_values(["sample_id", "position"])
    return list(zip(k.sample_id, k.position.astype(int), k.modality, strict=True))


def test_blur_boundary_renumber_and_empty_sample():
    df = items(
        [("a", -1, "metadata", None), ("a", 0, "text", "hello"), ("a", 1, "image", None), ("a", 2, "image", None),
         ("a", 3, "text", "bye"), ("b", -1, "metadata", None), ("b", 0, "image", None)],
        blur_score=np.array([np.nan, np.nan, 100.0, 99.99, np.nan, 5.0, 5.0][:7], dtype="float32"),
    )
    out = blur_filter(df, threshold=100.0)
    # 100.0 >= 100 kept (inclusive); 99.99 dropped; text 3 moves to 2; b loses its only image, then its metadata.
    assert ok_view(out) == [("a", -1, "metadata"), ("a", 0, "text"), ("a", 1, "image"), ("a", 2, "text")]
    d = dropped_items(out).set_index(["sample_id", "nf_input_position"])
    assert d.loc[("a", 2), "nf_reason"].startswith("blur: blur_score=99.99")
    assert d.loc[("b", 0), "nf_reason"] == "blur: blur_score=5 < 100"
    assert d.loc[("b", -1), "nf_reason"].startswith("empty_sample")
    assert validate(kept_items(out)) == []


def test_qr_boundary_is_strict():
    r = np.float32(0.05)
    df = items([("a", -1, "metadata", None), ("a", 0, "image", None), ("a", 1, "image", None), ("a", 2, "image", None)],
               qr_area_ratio=np.array([np.nan, r, np.nextafter(r, np.float32(0)), 0.0], dtype="float32"))
    out = qr_filter(df, threshold=float(r))
    # The stored float32 value equal to the threshold is dropped (strict <), the next smaller one kept.
    assert ok_view(out) == [("a", -1, "metadata"), ("a", 0, "image"), ("a", 1, "image")]
    assert kept_items(out).nf_input_position.tolist() == [-1, 1, 2]
    # Same rows as the hand-written pandas expression on the column.
    hand = df[(df.modality != "image") | (df.qr_area_ratio < float(r))]
    assert sorted(hand.position) == sorted(kept_items(out).nf_input_position)


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_clip_alignment_max_over_texts_boundary_and_textless_samples():
    e = {
        "t1": _unit(1, 0, 0), "t2": _unit(0, 1, 0), "empty": _unit(0, 0, 1),
        "i_hi": _unit(0.6, 0.8, 0), "i_mid": _unit(0.6, 0.0, 0.8), "i_lo": _unit(0, 0, 1), "i_none": _unit(1, 0, 0),
    }
    rows = [("a", -1, "metadata", None), ("a", 0, "text", "first"), ("a", 1, "image", None), ("a", 2, "text", "second"),
            ("a", 3, "image", None), ("a", 4, "image", None), ("a", 5, "text", "   "),
            ("b", -1, "metadata", None), ("b", 0, "image", None)]
    keys = [None, "t1", "i_hi", "t2", "i_mid", "i_lo", "empty", None, "i_none"]
    df = items(rows)
    df["embedding"] = from_matrix(np.stack([e[k] if k and k.startswith("i") else np.zeros(3, np.float32) for k in keys]))
    df["text_embedding"] = from_matrix(np.stack([e[k] if k and not k.startswith("i") else np.zeros(3, np.float32) for k in keys]))
    df.loc[[k is None or not k.startswith("i") for k in keys], "embedding"] = None
    df.loc[[k is None or k.startswith("i") for k in keys], "text_embedding"] = None
    # i_hi: max(0.6, 0.8) = 0.8; i_mid: 0.6 (the whitespace text is not a text); i_lo: 0.
    mid = float(np.float32(_unit(0.6, 0, 0.8) @ _unit(1, 0, 0)))
    out = clip_alignment_filter(df, min_score=mid)
    view = ok_view(out)
    assert ("a", 1, "image") in view and ("a", 3, "image") in view  # 0.8 kept, 0.6 == min_score kept
    assert len([v for v in view if v[0] == "a" and v[2] == "image"]) == 2
    assert [v for v in view if v[0] == "a" and v[2] == "text"] == [("a", 0, "text"), ("a", 2, "text"), ("a", 4, "text")]
    assert not any(v[0] == "b" for v in view)  # b has no text: its image goes, then the empty sample
    scores = out.set_index(["sample_id", "nf_input_position"]).clip_score
    assert scores[("a", 1)] == pytest.approx(0.8, abs=1e-6) and np.isnan(scores[("b", 0)])
    reasons = dropped_items(out).set_index(["sample_id", "nf_input_position"]).nf_reason
    assert reasons[("a", 4)].startswith("clip_alignment: clip_score=0 <")
    assert reasons[("b", 0)] == "clip_alignment: no text in the sample"
    # Just above the boundary drops the 0.6 image too; text rows are never dropped.
    out2 = clip_alignment_filter(df, min_score=float(np.nextafter(np.float32(mid), np.float32(1))))
    assert len([v for v in ok_view(out2) if v[2] == "image"]) == 1
    assert len([v for v in ok_view(out2) if v[2] == "text"]) == 3


@pytest.mark.parametrize(
    ("texts", "n_img", "lo", "hi", "kept"),
    [
        (["  one   two three  "], 1, 1 / 3, 1 / 3, True),  # 3 words
        ([], 2, 1.5, 2.5, True),  # image-only: denominator 1
        (["one two three four"], 1, 0.25, 0.25, True),  # inclusive at both ends
        (["one two", "three four"], 1, 0.15, 0.25, True),
        (["a b c d e"], 1, 1.0, 2.0, False),
        (["word"], 2, 0.0, 1.0, False),
    ],
)
def test_image_text_ratio_cases(texts, n_img, lo, hi, kept):
    rows = [("s", -1, "metadata", None)]
    for t in texts:
        rows.append(("s", len(rows) - 1, "text", t))
    for _ in range(n_img):
        rows.append(("s", len(rows) - 1, "image", None))
    out = image_text_ratio_filter(items(rows), min_ratio=lo, max_ratio=hi)
    assert (kept_items(out).shape[0] == len(rows)) is kept
    if not kept:
        assert (out.nf_status == "filtered").all() and out.nf_reason.str.startswith("image_text_ratio:").all()


def test_ratio_filter_keeps_only_in_range_sample_and_ignores_dropped_items():
    df = items([("keep", -1, "metadata", None), ("keep", 0, "text", "two words"), ("keep", 1, "image", None),
                ("drop", -1, "metadata", None), ("drop", 0, "text", "three words here"), ("drop", 1, "image", None)])
    out = image_text_ratio_filter(df, 0.4, 0.6)
    assert set(kept_items(out).sample_id) == {"keep"}
    # An item dropped earlier no longer counts: with the image gone, 0 images / 2 words = 0.
    df2 = blur_filter(df.assign(blur_score=np.float32([np.nan, np.nan, 1.0, np.nan, np.nan, 500.0])), 100)
    out2 = image_text_ratio_filter(df2, 0.0, 0.0)
    assert set(kept_items(out2).sample_id) == {"keep"}


def test_filters_identical_across_partitionings(mint_shards):
    d, _ = mint_shards
    base = read_interleaved_webdataset(str(d), materialize=True).compute().reset_index(drop=True)
    rng = np.random.default_rng(0)
    base["blur_score"] = np.where(base.modality == "image", rng.uniform(0, 200, len(base)), np.nan).astype("float32")

    def run(ddf):
        return image_text_ratio_filter(blur_filter(ddf, 100.0), 0.0, 0.5).compute()

    whole = run(dd.from_pandas(base, npartitions=1, sort=False))
    # Partitions of whole samples, cut at different sample boundaries.
    sids = base.sample_id.drop_duplicates().tolist()
    parts = [base[base.sample_id.isin(sids[:2])], base[base.sample_id.isin(sids[2:4])], base[base.sample_id.isin(sids[4:])]]
    split = run(dd.from_map(lambda p: p, parts, meta=base.iloc[:0], enforce_metadata=False))
    key = ["sample_id", "nf_input_position", "modality"]
    a = whole.sort_values(key).reset_index(drop=True)
    b = split.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert (a.nf_status != "ok").any() and (a.nf_status == "ok").any()


def test_score_items_decodes_once_and_scores_real_photos(mint_shards, monkeypatch):
    import nemo_frames.images.decode as dec

    d, _ = mint_shards
    calls = []
    real = dec.decode_image
    monkeypatch.setattr(dec, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    lazy = read_interleaved_webdataset(str(d))  # locators only: bytes fetched by source_ref
    scored = score_items(lazy, blur=True, qr=True).compute()
    imgs = scored[scored.modality == "image"]
    assert len(calls) == len(imgs) == 15  # one decode per image for both metrics
    assert imgs.blur_score.notna().all() and (imgs.blur_score > 0).all()
    assert (imgs.qr_area_ratio == 0).all()  # photos without QR codes
    assert scored[scored.modality != "image"].blur_score.isna().all()
    out = blur_filter(scored, float(imgs.blur_score.median()))
    assert 0 < (kept_items(out).modality == "image").sum() < 15


def test_score_items_clip_embeddings_with_tiny_model(mint_shards):
    from nemo_frames.models.clip import ClipConfig

    d, _ = mint_shards
    cfg = ClipConfig(model="nf-tiny-vit", pretrained=None, device="cpu")
    scored = score_items(read_interleaved_webdataset(str(d), materialize=True), blur=False, qr=False, clip=cfg).compute()
    img = scored[scored.modality == "image"]
    txt = scored[(scored.modality == "text")]
    assert img.embedding.notna().all() and txt.text_embedding.notna().all()
    assert np.allclose([np.linalg.norm(v) for v in img.embedding], 1, atol=1e-4)
    out = clip_alignment_filter(scored, min_score=-1.0)
    # Every image with a text in its sample survives min_score=-1; the image-only sample's images do not.
    dropped = dropped_items(out)
    assert set(dropped[dropped.modality == "image"].sample_id) == {"imgonly"}
    assert not math.isnan(out[(out.modality == "image") & (out.sample_id == "doc0")].clip_score.iloc[0])
