"""Conversions between the sample table, the item table and a plain text-document table.

* :func:`samples_to_items`: each image-caption pair becomes a document of one image
  (position 0) and, when it has a caption, one text (position 1), plus its metadata row.
* :func:`items_to_samples`: back, for samples with exactly one image and at most one
  text; other samples are marked ``filtered`` with reason ``not_a_pair``.
* :func:`items_to_text_documents`: one row per sample with the texts joined in document
  order and an image placeholder (``<image>``) where each image sits, the image locators
  kept as a list column, for text pipelines.
"""

from __future__ import annotations

import json
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.interleaved import schema as IS
from nemo_frames.interleaved.ops import ensure_item_ledger
from nemo_frames.ledger import STRING, ensure_ledger
from nemo_frames.schema import Status

_SAMPLE_LOCATOR = (S.SOURCE, S.IMAGE_MEMBER, S.IMAGE_OFFSET, S.IMAGE_SIZE, S.IMAGE_BYTES, S.CAPTION, S.MEMBERS, S.KEY)
_LIST_STR = pd.ArrowDtype(pa.list_(pa.string()))


def _map(df: Any, fn: Any, meta: pd.DataFrame) -> Any:
    if isinstance(df, pd.DataFrame):
        return fn(df)
    return df.map_partitions(fn, meta=meta)


def _none(v: Any) -> Any:
    return None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v


# --------------------------------------------------------------------------- sample → item
def _s2i(pdf: pd.DataFrame) -> pd.DataFrame:
    pdf = ensure_ledger(pdf).reset_index(drop=True)
    passthrough = [c for c in pdf.columns if c not in _SAMPLE_LOCATOR and c not in (S.STATUS, S.ERROR, S.REASON)]
    n = len(pdf)
    rows_per = 3
    idx = np.repeat(np.arange(n), rows_per)
    kind = np.tile(np.array(["metadata", "image", "text"], dtype=object), n)
    pos = np.tile(np.array([-1, 0, 1]), n)
    keys = pdf[S.KEY].to_numpy(dtype=object, na_value=None)
    caption = pdf[S.CAPTION].to_numpy(dtype=object, na_value=None) if S.CAPTION in pdf else np.full(n, None, object)
    src = pdf[S.SOURCE].to_numpy(dtype=object, na_value=None) if S.SOURCE in pdf else np.full(n, None, object)
    mem = pdf[S.IMAGE_MEMBER].to_numpy(dtype=object, na_value=None) if S.IMAGE_MEMBER in pdf else np.full(n, None, object)
    off = pdf[S.IMAGE_OFFSET].tolist() if S.IMAGE_OFFSET in pdf else [None] * n
    size = pdf[S.IMAGE_SIZE].tolist() if S.IMAGE_SIZE in pdf else [None] * n
    blobs = pdf[S.IMAGE_BYTES].tolist() if S.IMAGE_BYTES in pdf else [None] * n
    keep = ~((kind == "text") & np.array([caption[i] is None for i in idx], dtype=bool))
    refs, types, texts, bins = [], [], [], []
    for i, k in zip(idx, kind, strict=True):
        if k == "image" and src[i] is not None:
            o, s_ = _none(off[i]), _none(size[i])
            refs.append(IS.make_ref(src[i], mem[i], o, s_) if o is not None else IS.make_ref(src[i], mem[i]))
        else:
            refs.append(None)
        if k == "image":
            from nemo_frames.interleaved.reader import content_type_of

            types.append(content_type_of(mem[i]) if mem[i] else None)
            b = _none(blobs[i])
            bins.append(bytes(b) if b is not None else None)
            texts.append(None)
        else:
            types.append("text/plain" if k == "text" else "application/json")
            texts.append(caption[i] if k == "text" else None)
            bins.append(None)
    out = pd.DataFrame(
        {
            IS.SAMPLE_ID: pd.Series(keys[idx], dtype=STRING),
            IS.POSITION: pd.Series(pos, dtype="Int32"),
            IS.MODALITY: pd.Series(kind, dtype=STRING),
            IS.CONTENT_TYPE: pd.Series(types, dtype=STRING),
            IS.TEXT_CONTENT: pd.Series(texts, dtype=STRING),
            IS.BINARY_CONTENT: pd.Series(pa.array(bins, pa.large_binary()), dtype=pd.ArrowDtype(pa.large_binary())),
            IS.SOURCE_REF: pd.Series(refs, dtype=STRING),
            IS.MATERIALIZE_ERROR: pd.Series([None] * len(idx), dtype=STRING),
        }
    )
    is_meta = kind == "metadata"
    for c in passthrough:
        col = pdf[c].iloc[idx].reset_index(drop=True)
        # Sample-level values live on the metadata row; per-image scores (blur_score, embedding, …) on the image row.
        per_image = c in (S.WIDTH, S.HEIGHT, S.EMBEDDING, S.AESTHETIC_SCORE, S.NSFW_SCORE, S.BLUR_SCORE,
                          S.QR_AREA_RATIO, S.PHASH, S.CONTENT_HASH)
        per_text = c == S.TEXT_EMBEDDING
        where = (kind == "image") if per_image else (kind == "text") if per_text else is_meta
        if isinstance(col.dtype, pd.ArrowDtype):
            out[c] = col.where(pd.Series(where))
        else:
            vals = col.to_numpy(dtype=object)
            vals[~where] = None
            out[c] = pd.Series(vals, dtype=col.dtype)
    status = pdf[S.STATUS].to_numpy(dtype=object)[idx]
    out[S.STATUS] = pd.Series(status, dtype=STRING)
    out[S.ERROR] = pd.Series(pdf[S.ERROR].to_numpy(dtype=object, na_value=None)[idx], dtype=STRING)
    out[S.REASON] = pd.Series(pdf[S.REASON].to_numpy(dtype=object, na_value=None)[idx], dtype=STRING)
    out[IS.INPUT_POSITION] = out[IS.POSITION]
    # A sample-table row without a key has no document (shard-level error): keep it as one unplaced row.
    no_key = np.array([k is None for k in keys[idx]], dtype=bool)
    out = out[keep & ~(no_key & ~is_meta)].reset_index(drop=True)
    out.loc[out[IS.SAMPLE_ID].isna(), IS.POSITION] = IS.UNPLACED_POSITION
    return IS.order_items(IS.canonicalize(out))


def samples_to_items(df: dd.DataFrame | pd.DataFrame) -> dd.DataFrame | pd.DataFrame:
    """Sample table → item table: one document per pair (metadata −1, image 0, caption text 1).

    Locators become ``source_ref`` (``path`` = ``source``, ``member``, offsets); ``image_bytes``
    becomes ``binary_content``. Sample-level columns go to the metadata row; per-image scores
    (``width``, ``height``, ``embedding``, ``*_score``, ``phash``, ``content_hash``) to the image
    row; ``text_embedding`` to the text row. The ledger of each sample is copied to its rows.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"key": ["k1"], "source": ["/d/0.tar"], "image_member": ["k1.jpg"],
    ...     "image_offset": [512], "image_size": [10], "caption": ["a cat"], "url": ["http://x"]})
    >>> samples_to_items(s)[["position", "modality", "text_content", "url"]].values.tolist()
    [[-1, 'metadata', <NA>, 'http://x'], [0, 'image', <NA>, nan], [1, 'text', 'a cat', nan]]
    """
    if isinstance(df, pd.DataFrame):
        return _s2i(df)
    return df.map_partitions(_s2i, meta=_s2i(df._meta))


# --------------------------------------------------------------------------- item → sample
def _i2s(pdf: pd.DataFrame) -> pd.DataFrame:
    pdf = ensure_item_ledger(pdf)
    ok = pdf[(pdf[S.STATUS] == Status.OK.value) & pdf[IS.SAMPLE_ID].notna()]
    n_img = ok[ok[IS.MODALITY] == "image"].groupby(IS.SAMPLE_ID).size()
    n_txt = ok[ok[IS.MODALITY] == "text"].groupby(IS.SAMPLE_ID).size()
    passthrough = [c for c in pdf.columns if c not in IS.RESERVED and c not in IS.LEDGER_TYPES]
    rows = []
    for sid, g in ok.groupby(IS.SAMPLE_ID, sort=True):
        ni, nt = int(n_img.get(sid, 0)), int(n_txt.get(sid, 0))
        row: dict[str, Any] = {S.KEY: sid, S.STATUS: Status.OK.value, S.REASON: None}
        if ni != 1 or nt > 1:
            row[S.STATUS] = Status.FILTERED.value
            row[S.REASON] = f"not_a_pair: {ni} images and {nt} texts; a sample-table row holds one image and at most one caption"
        img = g[g[IS.MODALITY] == "image"]
        txt = g[g[IS.MODALITY] == "text"]
        meta = g[g[IS.MODALITY] == "metadata"]
        ref = IS.parse_ref(img[IS.SOURCE_REF].iloc[0]) if len(img) else None
        row[S.SOURCE] = ref.get("path") if ref else None
        row[S.IMAGE_MEMBER] = ref.get("member") if ref else None
        row[S.IMAGE_OFFSET] = ref.get("byte_offset") if ref else None
        row[S.IMAGE_SIZE] = ref.get("byte_size") if ref else None
        b = _none(img[IS.BINARY_CONTENT].iloc[0]) if len(img) else None
        row[S.IMAGE_BYTES] = bytes(b) if b is not None else None
        row[S.CAPTION] = _none(txt[IS.TEXT_CONTENT].iloc[0]) if len(txt) else None
        for c in passthrough:
            vals = [_none(v) for src in (meta, img, txt) if len(src) for v in [src[c].iloc[0]]]
            row[c] = next((v for v in vals if v is not None), None)
        rows.append(row)
    return _sample_frame(rows, pdf, passthrough)


def _sample_frame(rows: list[dict[str, Any]], pdf: pd.DataFrame, passthrough: list[str]) -> pd.DataFrame:
    cols: dict[str, Any] = {
        S.KEY: STRING, S.SOURCE: STRING, S.IMAGE_MEMBER: STRING, S.IMAGE_OFFSET: "Int64", S.IMAGE_SIZE: "Int64",
        S.CAPTION: STRING, S.IMAGE_BYTES: pd.ArrowDtype(pa.binary()),
    }
    for c in passthrough:
        cols[c] = pdf[c].dtype
    cols.update({S.STATUS: STRING, S.ERROR: STRING, S.REASON: STRING})
    data = {}
    for c, t in cols.items():
        vals = [r.get(c) for r in rows]
        if isinstance(t, pd.ArrowDtype):
            data[c] = pd.Series(pa.array(vals, type=t.pyarrow_dtype), dtype=t)
        else:
            data[c] = pd.Series(vals, dtype=t)
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))


def items_to_samples(df: dd.DataFrame | pd.DataFrame) -> dd.DataFrame | pd.DataFrame:
    """Item table → sample table, one row per sample with ``ok`` content.

    A sample with exactly one image and at most one text becomes an ``ok`` pair (``key`` =
    ``sample_id``, locator from the image's ``source_ref``, ``image_bytes`` from
    ``binary_content``, ``caption`` from the text); any other shape is kept as a row marked
    ``filtered`` with reason ``not_a_pair: …``. Passthrough columns take the first non-null
    value of the metadata, image and text rows, in that order.
    """
    if isinstance(df, pd.DataFrame):
        return _i2s(df)
    meta = _sample_frame([], ensure_item_ledger(df._meta), [c for c in df.columns if c not in IS.RESERVED and c not in IS.LEDGER_TYPES])
    return df.map_partitions(_i2s, meta=meta)


# --------------------------------------------------------------------------- item → text document
def _i2t(pdf: pd.DataFrame, image_token: str, separator: str) -> pd.DataFrame:
    pdf = ensure_item_ledger(pdf)
    ok = pdf[(pdf[S.STATUS] == Status.OK.value) & pdf[IS.SAMPLE_ID].notna()]
    meta_cols = [c for c in pdf.columns if c not in IS.RESERVED and c not in IS.LEDGER_TYPES]
    ids, texts, refs, n_img, n_txt = [], [], [], [], []
    metas: dict[str, list[Any]] = {c: [] for c in meta_cols}
    for sid, g in ok.groupby(IS.SAMPLE_ID, sort=True):
        content = g[g[IS.MODALITY] != "metadata"].sort_values(IS.POSITION, kind="stable")
        parts, locs = [], []
        for mod, t, ref in zip(content[IS.MODALITY], content[IS.TEXT_CONTENT], content[IS.SOURCE_REF], strict=True):
            if mod == "image":
                parts.append(image_token)
                locs.append(_none(ref))
            elif _none(t) is not None:
                parts.append(str(t))
        ids.append(sid)
        texts.append(separator.join(parts))
        refs.append(locs)
        n_img.append(int((content[IS.MODALITY] == "image").sum()))
        n_txt.append(int((content[IS.MODALITY] == "text").sum()))
        m = g[g[IS.MODALITY] == "metadata"]
        for c in meta_cols:
            metas[c].append(m[c].iloc[0] if len(m) else None)
    out = pd.DataFrame(
        {
            IS.SAMPLE_ID: pd.Series(ids, dtype=STRING),
            "text": pd.Series(texts, dtype=STRING),
            "image_refs": pd.Series(pa.array(refs, pa.list_(pa.string())), dtype=_LIST_STR),
            "n_images": pd.Series(n_img, dtype="int32"),
            "n_texts": pd.Series(n_txt, dtype="int32"),
        }
    )
    for c in meta_cols:
        dt = pdf[c].dtype
        out[c] = pd.Series(pa.array(metas[c], type=dt.pyarrow_dtype), dtype=dt) if isinstance(dt, pd.ArrowDtype) else pd.Series(metas[c], dtype=dt)
    return out


def items_to_text_documents(
    df: dd.DataFrame | pd.DataFrame, *, image_token: str = "<image>", separator: str = "\n\n"
) -> dd.DataFrame | pd.DataFrame:
    """Item table → one text document per sample, for text pipelines.

    ``text`` joins the sample's ``ok`` content in position order with ``separator``, putting
    ``image_token`` where each image sits; ``image_refs`` (``list<string>``) holds the images'
    ``source_ref`` locators in the same order, so the placeholders can be resolved later;
    ``n_images`` / ``n_texts`` count them; the metadata row's passthrough columns follow.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"sample_id": ["d"] * 4, "position": [-1, 0, 1, 2],
    ...     "modality": ["metadata", "text", "image", "text"], "text_content": [None, "Hi.", None, "Bye."],
    ...     "source_ref": [None, None, '{"path": "x.tar", "member": "d.1.jpg"}', None]})
    >>> items_to_text_documents(df).text.iloc[0]
    'Hi.\\n\\n<image>\\n\\nBye.'
    """
    if isinstance(df, pd.DataFrame):
        return _i2t(df, image_token, separator)
    return df.map_partitions(_i2t, image_token, separator, meta=_i2t(ensure_item_ledger(df._meta), image_token, separator))


def refs_of(document: pd.Series) -> list[dict[str, Any]]:
    """The parsed locators of one text document's images (a row of :func:`items_to_text_documents`)."""
    return [json.loads(r) for r in document["image_refs"] if r is not None]


__all__ = ["items_to_samples", "items_to_text_documents", "refs_of", "samples_to_items"]
