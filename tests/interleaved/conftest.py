"""MINT-1T-style shards built from real photos (scikit-image) for the interleaved tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import photos, write_tar


def small_photos(size: int = 96) -> dict[str, np.ndarray]:
    import cv2

    out = {}
    for name, rgb in photos().items():
        h, w = rgb.shape[:2]
        s = size / max(h, w)
        out[name] = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    return out


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def multi_tiff(frames: list[np.ndarray]) -> bytes:
    """A multi-frame TIFF (one page per frame), as MINT-1T stores a document's images."""
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="TIFF", save_all=True, append_images=ims[1:], compression="tiff_adobe_deflate")
    return buf.getvalue()


def doc_json(**doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


@pytest.fixture(scope="session")
def pics() -> dict[str, np.ndarray]:
    return small_photos()


@pytest.fixture
def mint_shards(tmp_path: Path, pics):
    """Two shards covering the layouts and edge cases; returns (dir, expected {sample_id: (texts, images)})."""
    names = sorted(pics)
    j = {n: jpeg(pics[n]) for n in names}
    d = tmp_path / "mint"
    d.mkdir()
    expected: dict[str, dict[str, Any]] = {}
    # Shard 0: images as separate members named in the JSON; edge-case samples.
    m0: list[tuple[str, bytes]] = []
    m0 += [("doc0.0.jpg", j[names[0]]), ("doc0.2.png", png(pics[names[1]]))]
    m0.append(("doc0.json", doc_json(texts=[None, "An astronaut in orbit.", None, "The end — ünïcode ✓"],
                                     images=["doc0.0.jpg", None, "doc0.2.png", None],
                                     url="https://example.org/0", page=3, score=0.5, flag=True, nested={"a": [1, 2]})))
    expected["doc0"] = {"n_text": 2, "n_image": 2}
    m0.append(("textonly.json", doc_json(texts=["only words here", "and more"], images=[None, None],
                                         url="https://example.org/t", page=1, score=1.5, flag=False)))
    expected["textonly"] = {"n_text": 2, "n_image": 0}
    m0 += [("imgonly.0.jpg", j[names[2]]), ("imgonly.1.jpg", j[names[3]])]
    m0.append(("imgonly.json", doc_json(texts=[None, None], images=["imgonly.0.jpg", "imgonly.1.jpg"],
                                        url="https://example.org/i", page=2, score=2.5, flag=True)))
    expected["imgonly"] = {"n_text": 0, "n_image": 2}
    many = []
    for i in range(7):
        many.append((f"many.{2 * i}.jpg", j[names[i % len(names)]]))
    m0 += many
    texts = [None if k % 2 == 0 else f"caption {k}" for k in range(14)]
    images = [f"many.{k}.jpg" if k % 2 == 0 else None for k in range(14)]
    m0.append(("many.json", doc_json(texts=texts, images=images, url="https://example.org/m", page=9, score=3.5, flag=False)))
    expected["many"] = {"n_text": 7, "n_image": 7}
    # Unicode and slashes in the id: the member stem is an escaped form, the JSON carries the id.
    sid = "pdfs/ünï cödé:42.v1"
    m0 += [("weird.0.jpg", j[names[4]])]
    m0.append(("weird.json", doc_json(sample_id=sid, texts=[None, "Ελληνικά και 日本語"], images=["weird.0.jpg", None],
                                      url="https://example.org/w", page=4, score=4.5, flag=True)))
    expected[sid] = {"n_text": 1, "n_image": 1}
    write_tar(d / "00000.tar", m0)
    # Shard 1: MINT-1T PDF layout, one multi-frame TIFF per document, image tokens are not member names.
    frames = [pics[names[k]] for k in range(3)]
    m1 = [("pdfa.tiff", multi_tiff(frames)),
          ("pdfa.json", doc_json(texts=["page one", None, "page two", None, None],
                                 images=[None, "page_0_image_1", None, "page_1_image_3", "page_1_image_4"],
                                 url="https://example.org/pdfa", page=2, score=0.25, flag=False,
                                 image_metadata=[{"page": 0}, {"page": 1}, {"page": 1}]))]
    expected["pdfa"] = {"n_text": 2, "n_image": 3}
    write_tar(d / "00001.tar", m1)
    return d, expected


def canon(df: pd.DataFrame, drop: tuple[str, ...] = ("source_ref", "nf_input_position")) -> pd.DataFrame:
    """An item table reduced to what a round trip must keep, in a canonical order."""
    from nemo_frames.interleaved import canonicalize, sort_items

    df = canonicalize(df)
    df = df[df["nf_status"] == "ok"] if "nf_status" in df.columns else df
    df = df.drop(columns=[c for c in drop if c in df.columns])
    df = sort_items(df).reset_index(drop=True)
    return df[sorted(df.columns)]
