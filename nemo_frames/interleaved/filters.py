"""Scoring and sample-level filters on the item table (DESIGN §5).

:func:`score_items` is the fused pixel pass: it fetches each ``ok`` image item's bytes
once, decodes them once, and computes every requested metric on the same pixels
(``blur_score``, ``qr_area_ratio``, the CLIP ``embedding``), plus ``text_embedding``
of the text items. The filters then only read those columns:

* **blur** keeps an image item if ``blur_score >= threshold`` (default 100);
* **QR** keeps an image item if ``qr_area_ratio < threshold`` (default 0.05);
* **CLIP alignment** scores each image by the max cosine over the non-empty texts of
  its sample (``clip_score``) and keeps it if ``clip_score >= min_score`` (default
  0.15); images of samples without text are dropped; text rows are never dropped;
* **image-to-text ratio** keeps a whole sample if ``min_ratio <= images / max(words, 1)
  <= max_ratio`` (words: whitespace-split tokens over the sample's texts).

Comparisons use the stored column values (float32 scores upcast to float64, as
``df.blur_score >= 100`` does in pandas), so a filter and the same expression written
by hand select the same rows. Only ``ok`` rows are considered. A dropped row is
marked ``filtered`` with ``nf_reason``; then the sample is renumbered and an emptied
sample loses its metadata row (:func:`~nemo_frames.interleaved.ops.renumber`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.interleaved import schema as IS
from nemo_frames.interleaved.materialize import apply_failures, fetch_item_bytes
from nemo_frames.interleaved.ops import ensure_item_ledger, renumber
from nemo_frames.ledger import mark_error, mark_filtered
from nemo_frames.schema import ErrorCode, Status

F32 = np.float32
_EMB = pd.ArrowDtype(S.EMBEDDING_TYPE)


# --------------------------------------------------------------------------- the metric adapter
def pixel_metrics() -> dict[str, Any]:
    """The per-image metric functions (``rgb uint8 (H, W, 3) → float``) used by :func:`score_items`."""
    from nemo_frames.images.metrics import blur_score, qr_area_ratio

    return {S.BLUR_SCORE: blur_score, S.QR_AREA_RATIO: qr_area_ratio}


def _list_series(rows: list[np.ndarray | None], index: pd.Index) -> pd.Series:
    arr = pa.array([None if r is None else np.asarray(r, np.float32) for r in rows], type=S.EMBEDDING_TYPE)
    return pd.Series(arr, index=index, dtype=_EMB)


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """What :func:`score_items` computes (see its parameters)."""

    blur: bool = True
    qr: bool = True
    clip: Any = None
    max_pixels: int | None = 178_956_970
    storage_options: dict[str, Any] | None = None


def _score_columns(cfg: ScoreConfig) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    if cfg.blur:
        cols[S.BLUR_SCORE] = "float32"
    if cfg.qr:
        cols[S.QR_AREA_RATIO] = "float32"
    if cfg.clip is not None:
        cols[S.EMBEDDING] = _EMB
        cols[S.TEXT_EMBEDDING] = _EMB
    return cols


def _score_partition(pdf: pd.DataFrame, cfg: ScoreConfig) -> pd.DataFrame:
    from nemo_frames.images.decode import DecodeError, decode_image

    pdf = ensure_item_ledger(pdf)
    n = len(pdf)
    sel = ((pdf[IS.MODALITY] == "image") & (pdf[S.STATUS] == Status.OK.value)).to_numpy(dtype=bool, na_value=False)
    data, fails = fetch_item_bytes(pdf, sel, storage_options=cfg.storage_options)
    metrics = pixel_metrics()
    wanted = [c for c in (S.BLUR_SCORE, S.QR_AREA_RATIO) if (c == S.BLUR_SCORE and cfg.blur) or (c == S.QR_AREA_RATIO and cfg.qr)]
    values = {c: np.full(n, np.nan, dtype=np.float32) for c in wanted}
    decode_errors: dict[ErrorCode, list[tuple[int, str]]] = {}
    clip_inputs: list[tuple[int, Any]] = []
    pixels_needed = bool(wanted)
    emb = None
    if cfg.clip is not None:
        from nemo_frames.models.clip import get_embedder

        emb = get_embedder(cfg.clip)
    for i in np.flatnonzero(sel):
        if data[i] is None:
            continue
        try:
            # One decode per image: full size when a pixel metric needs it, else DCT-reduced for CLIP.
            img = decode_image(data[i], target=None if pixels_needed else 224, max_pixels=cfg.max_pixels)
        except DecodeError as exc:
            decode_errors.setdefault(exc.code, []).append((i, exc.message))
            continue
        for c in wanted:
            values[c][i] = metrics[c](img.rgb)
        if emb is not None:
            clip_inputs.append((i, img))
    out = apply_failures(pdf, fails)
    for code, items in decode_errors.items():
        mask = np.zeros(n, bool)
        msgs = [""] * n
        for i, m in items:
            mask[i] = True
            msgs[i] = m
        out = mark_error(out, mask, code, pd.Series(msgs, index=out.index))
    add: dict[str, Any] = {c: pd.Series(v, index=out.index, dtype="float32") for c, v in values.items()}
    if emb is not None:
        from nemo_frames.images.preprocess import ClipPreprocess, preprocess_batch

        pp = emb.preprocess_params()
        params = ClipPreprocess(size=pp.image_size[0] if pp.image_size[0] == pp.image_size[1] else pp.image_size,
                                crop=pp.image_size, mean=pp.mean, std=pp.std,
                                interpolation=pp.interpolation if pp.interpolation in ("bicubic", "bilinear") else "bicubic")
        img_rows: list[np.ndarray | None] = [None] * n
        if clip_inputs:
            vecs = emb.embed_images(preprocess_batch([im for _, im in clip_inputs], params))
            for (i, _), v in zip(clip_inputs, vecs, strict=True):
                img_rows[i] = v
        txt_rows: list[np.ndarray | None] = [None] * n
        is_text = ((out[IS.MODALITY] == "text") & (out[S.STATUS] == Status.OK.value)).to_numpy(dtype=bool, na_value=False)
        texts = out[IS.TEXT_CONTENT].to_numpy(dtype=object, na_value=None)
        tidx = [i for i in np.flatnonzero(is_text) if texts[i] is not None and str(texts[i]).strip()]
        if tidx:
            tv = emb.embed_texts([str(texts[i]).strip() for i in tidx])
            for i, v in zip(tidx, tv, strict=True):
                txt_rows[i] = v
        add[S.EMBEDDING] = _list_series(img_rows, out.index)
        add[S.TEXT_EMBEDDING] = _list_series(txt_rows, out.index)
    return out.assign(**add)


def score_items(
    df: dd.DataFrame | pd.DataFrame,
    *,
    blur: bool = True,
    qr: bool = True,
    clip: Any = None,
    max_pixels: int | None = 178_956_970,
    storage_options: dict[str, Any] | None = None,
) -> dd.DataFrame | pd.DataFrame:
    """Decode every ``ok`` image item once and add the requested score columns.

    Parameters
    ----------
    df : dask or pandas DataFrame
        An item table; image bytes come from ``binary_content`` or are fetched by ``source_ref``.
    blur, qr : bool
        Add ``blur_score`` / ``qr_area_ratio`` (float32, image rows; null elsewhere).
    clip : ClipConfig, optional
        Add ``embedding`` (image rows) and ``text_embedding`` (text rows with non-empty
        stripped text), L2-normalised ``list<float32>``, from one model loaded per worker.
    max_pixels : int or None
        Pixel cap checked before decoding (``image_too_large`` above it).

    Returns
    -------
    The same frame with the score columns; images whose bytes cannot be fetched or decoded
    are marked ``error`` (``fetch_error``, ``missing_member``, ``decode_error``, ...).

    Examples
    --------
    >>> from nemo_frames.models.clip import ClipConfig  # doctest: +SKIP
    >>> scored = score_items(items, clip=ClipConfig(model="ViT-B-32", pretrained="/models/b32.safetensors"))  # doctest: +SKIP
    >>> kept = clip_alignment_filter(qr_filter(blur_filter(scored)), min_score=0.15)  # doctest: +SKIP
    """
    cfg = ScoreConfig(blur=blur, qr=qr, clip=clip, max_pixels=max_pixels, storage_options=storage_options)
    if isinstance(df, pd.DataFrame):
        return _score_partition(df, cfg)
    meta = ensure_item_ledger(df._meta).assign(
        **{c: pd.Series([], dtype=t) for c, t in _score_columns(cfg).items()}
    )
    return df.map_partitions(_score_partition, cfg, meta=meta)


# --------------------------------------------------------------------------- filters
def _need(df: pd.DataFrame, col: str, stage: str, fix: str) -> None:
    if col not in df.columns:
        raise ValueError(f"{stage}: the item table has no {col!r} column (found {list(df.columns)[:16]}); {fix}")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _apply(df: Any, stage: Any) -> Any:
    if isinstance(df, pd.DataFrame):
        return stage.transform(df)
    return df.map_partitions(stage.transform, meta=stage.meta(df._meta))


@dataclasses.dataclass(frozen=True)
class _ImageThreshold:
    """Shared body of the blur and QR filters: keep an ``ok`` image item when ``column <op> threshold``."""

    name: ClassVar[str] = ""
    column: ClassVar[str] = ""
    keep_op: ClassVar[str] = ""
    threshold: float = 0.0

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        _need(df, self.column, self.name, f"run score_items(df, {self.name}=True) first")
        df = ensure_item_ledger(df)
        img = (df[IS.MODALITY] == "image").to_numpy(dtype=bool, na_value=False)
        v = df[self.column].astype("float64").to_numpy(dtype="float64", na_value=np.nan)
        t = float(self.threshold)
        keep_v = v >= t if self.keep_op == ">=" else v < t
        keep = ~img | (~np.isnan(v) & keep_v)
        drop_op = "<" if self.keep_op == ">=" else ">="
        reason = pd.Series(
            [f"{self.name}: no {self.column} (not scored)" if np.isnan(x) else f"{self.name}: {self.column}={_fmt(x)} {drop_op} {_fmt(t)}" for x in v],
            index=df.index,
        )
        return renumber(mark_filtered(df, keep, reason))

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        return ensure_item_ledger(meta)


@dataclasses.dataclass(frozen=True)
class BlurFilter(_ImageThreshold):
    """Keep image items with ``blur_score >= threshold`` (variance of the Laplacian; default 100)."""

    name: ClassVar[str] = "blur"
    column: ClassVar[str] = S.BLUR_SCORE
    keep_op: ClassVar[str] = ">="
    threshold: float = 100.0


@dataclasses.dataclass(frozen=True)
class QRFilter(_ImageThreshold):
    """Keep image items with ``qr_area_ratio < threshold`` (default 0.05)."""

    name: ClassVar[str] = "qr"
    column: ClassVar[str] = S.QR_AREA_RATIO
    keep_op: ClassVar[str] = "<"
    threshold: float = 0.05


@dataclasses.dataclass(frozen=True)
class ClipAlignmentFilter:
    """Per image: ``clip_score`` = max cosine over its sample's non-empty ``ok`` texts; keep if ``>= min_score``.

    Images of a sample with no such text get a null ``clip_score`` and are dropped; text
    rows are never dropped. Needs ``embedding`` on image rows and ``text_embedding`` on text
    rows (:func:`score_items` with ``clip=``), both L2-normalised.
    """

    name: ClassVar[str] = "clip_alignment"
    min_score: float = 0.15

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        for c in (S.EMBEDDING, S.TEXT_EMBEDDING):
            _need(df, c, self.name, "run score_items(df, clip=ClipConfig(...)) first")
        df = ensure_item_ledger(df)
        n = len(df)
        ok = (df[S.STATUS] == Status.OK.value).to_numpy(dtype=bool, na_value=False)
        mod = df[IS.MODALITY].to_numpy(dtype=object, na_value=None)
        sid = df[IS.SAMPLE_ID].to_numpy(dtype=object, na_value=None)
        text = df[IS.TEXT_CONTENT].to_numpy(dtype=object, na_value=None)
        iemb = df[S.EMBEDDING].tolist()
        temb = df[S.TEXT_EMBEDDING].tolist()
        by_sample: dict[Any, list[np.ndarray]] = {}
        for i in range(n):
            if ok[i] and mod[i] == "text" and text[i] is not None and str(text[i]).strip() and temb[i] is not None:
                by_sample.setdefault(sid[i], []).append(np.asarray(temb[i], np.float32))
        mats = {k: np.stack(v) for k, v in by_sample.items()}
        score = np.full(n, np.nan, dtype=np.float32)
        reasons = [""] * n
        keep = np.ones(n, bool)
        for i in range(n):
            if not (ok[i] and mod[i] == "image"):
                continue
            if iemb[i] is None:
                keep[i], reasons[i] = False, f"{self.name}: no embedding (not scored)"
                continue
            m = mats.get(sid[i])
            if m is None:
                keep[i], reasons[i] = False, f"{self.name}: no text in the sample"
                continue
            score[i] = F32((m @ np.asarray(iemb[i], np.float32)).max())
            if not float(score[i]) >= float(self.min_score):
                keep[i] = False
                reasons[i] = f"{self.name}: clip_score={_fmt(float(score[i]))} < {_fmt(self.min_score)}"
        out = df.assign(**{S.CLIP_SCORE: pd.Series(score, index=df.index, dtype="float32")})
        return renumber(mark_filtered(out, keep, pd.Series(reasons, index=df.index)))

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        return ensure_item_ledger(meta).assign(**{S.CLIP_SCORE: pd.Series([], dtype="float32")})


@dataclasses.dataclass(frozen=True)
class ImageTextRatioFilter:
    """Keep whole samples with ``min_ratio <= images / max(words, 1) <= max_ratio`` (inclusive).

    ``images`` counts the sample's ``ok`` image rows; ``words`` the whitespace-split tokens
    (``str.split()``) of its ``ok`` text rows. A dropped sample has all its rows marked.
    """

    name: ClassVar[str] = "image_text_ratio"
    min_ratio: float = 0.0
    max_ratio: float = math.inf

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        df = ensure_item_ledger(df)
        ok = (df[S.STATUS] == Status.OK.value).to_numpy(dtype=bool, na_value=False)
        mod = df[IS.MODALITY].to_numpy(dtype=object, na_value=None)
        text = df[IS.TEXT_CONTENT].to_numpy(dtype=object, na_value=None)
        sid = df[IS.SAMPLE_ID].to_numpy(dtype=object, na_value=None)
        images: dict[Any, int] = {}
        words: dict[Any, int] = {}
        for i in range(len(df)):
            if not ok[i] or sid[i] is None:
                continue
            images.setdefault(sid[i], 0)
            words.setdefault(sid[i], 0)
            if mod[i] == "image":
                images[sid[i]] += 1
            elif mod[i] == "text" and text[i] is not None:
                words[sid[i]] += len(str(text[i]).split())
        drop_reason = {}
        for s in images:
            ratio = images[s] / max(words[s], 1)
            if not (self.min_ratio <= ratio <= self.max_ratio):
                drop_reason[s] = (
                    f"{self.name}: {images[s]} images / max({words[s]} words, 1) = {_fmt(ratio)} outside "
                    f"[{_fmt(self.min_ratio)}, {_fmt(self.max_ratio)}]"
                )
        keep = np.array([s not in drop_reason for s in sid], bool)
        reason = pd.Series([drop_reason.get(s, "") for s in sid], index=df.index)
        return renumber(mark_filtered(df, keep, reason))

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        return ensure_item_ledger(meta)


def blur_filter(df: Any, threshold: float = 100.0) -> Any:
    """Drop image items with ``blur_score < threshold`` (see :class:`BlurFilter`).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"sample_id": ["a"] * 4, "position": [-1, 0, 1, 2],
    ...     "modality": ["metadata", "image", "text", "image"], "text_content": [None, None, "hi", None],
    ...     "blur_score": [None, 99.5, None, 100.0]})
    >>> out = blur_filter(df, 100.0)
    >>> out[["position", "nf_status", "nf_reason"]].values.tolist()
    [[-1, 'ok', <NA>], [0, 'filtered', 'blur: blur_score=99.5 < 100'], [0, 'ok', <NA>], [1, 'ok', <NA>]]
    """
    return _apply(df, BlurFilter(threshold=threshold))


def qr_filter(df: Any, threshold: float = 0.05) -> Any:
    """Drop image items with ``qr_area_ratio >= threshold`` (see :class:`QRFilter`)."""
    return _apply(df, QRFilter(threshold=threshold))


def clip_alignment_filter(df: Any, min_score: float = 0.15) -> Any:
    """Drop image items whose best text cosine in their sample is below ``min_score`` (see :class:`ClipAlignmentFilter`)."""
    return _apply(df, ClipAlignmentFilter(min_score=min_score))


def image_text_ratio_filter(df: Any, min_ratio: float = 0.0, max_ratio: float = math.inf) -> Any:
    """Drop samples whose images ÷ max(words, 1) is outside ``[min_ratio, max_ratio]`` (see :class:`ImageTextRatioFilter`)."""
    if min_ratio > max_ratio:
        raise ValueError(f"image_text_ratio_filter: min_ratio {min_ratio} > max_ratio {max_ratio}")
    return _apply(df, ImageTextRatioFilter(min_ratio=min_ratio, max_ratio=max_ratio))


__all__ = [
    "BlurFilter",
    "ClipAlignmentFilter",
    "ImageTextRatioFilter",
    "QRFilter",
    "ScoreConfig",
    "blur_filter",
    "clip_alignment_filter",
    "image_text_ratio_filter",
    "pixel_metrics",
    "qr_filter",
    "score_items",
]
