"""Sample table ↔ item table, and item table → text documents."""

from __future__ import annotations

import json

import pandas as pd

from nemo_frames.interleaved import (
    items_to_samples,
    items_to_text_documents,
    read_interleaved_webdataset,
    samples_to_items,
    validate,
    write_interleaved_webdataset,
)
from nemo_frames.io.fetch import fetch_image_bytes
from nemo_frames.io.webdataset import read_webdataset


def test_pairs_to_items_and_back(make_shards, tmp_path):
    d, expected = make_shards(2, 3)
    samples = read_webdataset(str(d))
    items = samples_to_items(samples)
    p = items.compute()
    assert validate(p) == []
    assert (p.groupby("sample_id").size() == 3).all()
    assert p[p.modality == "image"].position.eq(0).all() and p[p.modality == "text"].position.eq(1).all()
    assert set(p[p.modality == "metadata"].url.dropna()) == {e["json"]["url"] for e in expected.values()}
    # The image row's locator fetches the original bytes, through the interleaved writer too.
    write_interleaved_webdataset(items, str(tmp_path / "w"))
    back_items = read_interleaved_webdataset(str(tmp_path / "w"), materialize=True).compute()
    for sid, b in zip(back_items[back_items.modality == "image"].sample_id, back_items[back_items.modality == "image"].binary_content, strict=True):
        assert b == expected[sid]["jpg"]
    # And back to the sample table: same keys, captions, locators.
    s2 = items_to_samples(items).compute().set_index("key")
    s1 = samples.compute().set_index("key")
    assert (s2.nf_status == "ok").all()
    assert s2.caption.to_dict() == s1.caption.to_dict()
    assert s2.image_offset.to_dict() == s1.image_offset.to_dict()
    got = fetch_image_bytes(s2.reset_index())
    assert all(b == expected[k]["jpg"] for k, b in zip(got.key, got.image_bytes, strict=True))


def test_documents_that_are_not_pairs_are_marked(mint_shards):
    d, _ = mint_shards
    s = items_to_samples(read_interleaved_webdataset(str(d))).compute().set_index("key")
    assert s.loc["pdfs/ünï cödé:42.v1", "nf_status"] == "ok"  # one image, one text
    assert s.loc["many", "nf_status"] == "filtered" and s.loc["many", "nf_reason"].startswith("not_a_pair: 7 images and 7 texts")
    assert s.loc["textonly", "nf_reason"].startswith("not_a_pair: 0 images")


def test_text_documents_with_placeholders(mint_shards):
    d, _ = mint_shards
    docs = items_to_text_documents(read_interleaved_webdataset(str(d))).compute().set_index("sample_id")
    doc0 = docs.loc["doc0"]
    assert doc0.text == "<image>\n\nAn astronaut in orbit.\n\n<image>\n\nThe end — ünïcode ✓"
    assert [json.loads(r)["member"] for r in doc0.image_refs] == ["doc0.0.jpg", "doc0.2.png"]
    assert (doc0.n_images, doc0.n_texts, doc0.url) == (2, 2, "https://example.org/0")
    pdfa = docs.loc["pdfa"]
    assert pdfa.text == "page one\n\n<image>\n\npage two\n\n<image>\n\n<image>"
    assert [json.loads(r)["frame_index"] for r in pdfa.image_refs] == [0, 1, 2]
    assert docs.loc["textonly"].image_refs.tolist() == [] if hasattr(docs.loc["textonly"].image_refs, "tolist") else True
    assert isinstance(docs.text.dtype, pd.StringDtype)
