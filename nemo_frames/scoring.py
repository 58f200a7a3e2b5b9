"""The fused scoring pass: fetch bytes, decode each image once, run every requested operator.

One ``map_partitions`` per partition: image bytes are fetched by locator (grouped
by shard), each image is decoded once, the pixel operators (size, blur, QR,
pHash) run on the decoded pixels, CLIP embeds a batch, and the heads (aesthetic,
NSFW) score the embeddings. Bytes are dropped before the partition leaves the task.

Decode size: CLIP alone (with pHash) decodes JPEGs at reduced size in the DCT
domain (the smallest libjpeg-turbo scale that still covers 224 px). Blur and QR
are defined on the full image, so when either is asked for, images are decoded
at full size and CLIP resizes from there.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.backend import from_matrix, to_matrix
from nemo_frames.ledger import STRING, ensure_ledger, mark_error
from nemo_frames.schema import Status

PathLike = str | os.PathLike[str]

# Columns each operator adds, with their pandas dtypes (nullable: errored rows stay null).
_COLUMNS: dict[str, Any] = {
    S.CONTENT_HASH: STRING,
    # Arrow-backed (not pandas' Int32): nullable for errored rows, and Dask's describe() accepts it.
    S.WIDTH: pd.ArrowDtype(pa.int32()),
    S.HEIGHT: pd.ArrowDtype(pa.int32()),
    S.BLUR_SCORE: "float32",
    S.QR_AREA_RATIO: "float32",
    S.PHASH: "UInt64",
    S.EMBEDDING: pd.ArrowDtype(S.EMBEDDING_TYPE),
    S.TEXT_EMBEDDING: pd.ArrowDtype(S.EMBEDDING_TYPE),
    S.CLIP_SCORE: "float32",
    S.AESTHETIC_SCORE: "float32",
    S.NSFW_SCORE: "float32",
}


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """What the fused pass computes.

    Parameters
    ----------
    clip : ClipConfig, dict or None
        CLIP model for ``embedding`` (see :class:`nemo_frames.models.clip.ClipConfig`). None: no CLIP.
    text : bool
        Also embed captions (``text_embedding``) and compute ``clip_score`` (cosine of the two).
    aesthetic, nsfw : path or None
        Weights of the LAION aesthetic head (V2 MLP or V1 linear) and of the LAION NSFW detector.
        They score ``embedding`` — computed here, or already in the table.
    blur, qr, phash, content_hash : bool
        Pixel operators (DESIGN §5). ``width``/``height`` are always recorded when decoding.
    max_pixels : int
        Decompression-bomb cap checked from the header before decoding.
    keep_bytes : bool
        Keep ``image_bytes`` in the output (default: dropped once scored).
    resample : str
        Resample of the CLIP fast path, default ``cv2-linear`` (:data:`nemo_frames.images.preprocess.DEFAULT_RESAMPLE`;
        modes and measured errors: :func:`nemo_frames.images.preprocess.preprocess_image`).
    prefetch : bool
        Decode and preprocess the next CLIP batch in a helper thread while the model embeds the
        current one (decoders and torch release the GIL). Measured on 2 CPU cores it raised fused
        ViT-B-32 throughput by 3-8 % (the model's threads leave gaps the decoder fills); on a GPU it
        keeps the device fed. Results are identical either way.
    decoder : {"cpu", "nvjpeg"}
        ``cpu``: the fast path (libjpeg-turbo DCT-scaled JPEGs, Pillow for the rest). ``nvjpeg``:
        a chunk's JPEGs go to torchvision's ``decode_jpeg`` on the CLIP model's device (nvJPEG on
        CUDA; libjpeg on CPU) and are resized and normalised there
        (:func:`nemo_frames.images.device_preprocess.preprocess_batch_torch`); other formats fall
        back to the CPU decoder per image. Blur / QR / pHash then copy each image to the host, so
        turn them off when only CLIP should run on the GPU.
    storage_options : dict, optional
        fsspec options to fetch bytes from remote shards.
    """

    clip: Any = None
    text: bool = False
    aesthetic: PathLike | None = None
    nsfw: PathLike | None = None
    blur: bool = True
    qr: bool = False
    phash: bool = True
    content_hash: bool = True
    max_pixels: int = 89_478_485
    keep_bytes: bool = False
    resample: Literal["auto", "cv2-cubic", "cv2-area", "cv2-linear", "pil-bicubic"] = "cv2-linear"
    prefetch: bool = True
    storage_options: dict[str, Any] | None = None
    decoder: Literal["cpu", "nvjpeg"] = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.clip, dict):
            from nemo_frames.models.clip import ClipConfig

            object.__setattr__(self, "clip", ClipConfig(**self.clip))
        if self.decoder not in ("cpu", "nvjpeg"):
            raise ValueError(f"ScoreConfig.decoder must be 'cpu' or 'nvjpeg', got {self.decoder!r}")
        if self.text and self.clip is None:
            raise ValueError("ScoreConfig: text=True embeds captions with CLIP; set clip=ClipConfig(...) too")

    @property
    def needs_pixels(self) -> bool:
        return bool(self.clip is not None or self.blur or self.qr or self.phash)

    def output_columns(self, has_embedding: bool = False) -> list[str]:
        cols = []
        if self.content_hash:
            cols.append(S.CONTENT_HASH)
        if self.needs_pixels:
            cols += [S.WIDTH, S.HEIGHT]
        if self.blur:
            cols.append(S.BLUR_SCORE)
        if self.qr:
            cols.append(S.QR_AREA_RATIO)
        if self.phash:
            cols.append(S.PHASH)
        if self.clip is not None:
            cols.append(S.EMBEDDING)
            if self.text:
                cols += [S.TEXT_EMBEDDING, S.CLIP_SCORE]
        if self.aesthetic is not None:
            cols.append(S.AESTHETIC_SCORE)
        if self.nsfw is not None:
            cols.append(S.NSFW_SCORE)
        if self.clip is None and not has_embedding and (self.aesthetic or self.nsfw):
            raise ValueError(
                "score: the aesthetic / NSFW heads score the 'embedding' column, which the table does not have; "
                "pass clip=ClipConfig(...) to compute it"
            )
        return cols


_HEADS: dict[tuple[str, str], Any] = {}


def _head(kind: Literal["aesthetic", "nsfw"], path: PathLike) -> Any:
    key = (kind, os.fspath(path))
    if key not in _HEADS:
        from nemo_frames.models.heads import AestheticHead, NsfwHead

        _HEADS[key] = (AestheticHead if kind == "aesthetic" else NsfwHead).from_file(path)
    return _HEADS[key]


def _preprocess_params(embedder: Any) -> Any:
    from nemo_frames.images.preprocess import ClipPreprocess

    p = embedder.preprocess_params()
    h, w = p.image_size
    size: int | tuple[int, int] = min(h, w) if p.resize_mode == "shortest" else (h, w)
    return ClipPreprocess(size=size, crop=(h, w), mean=p.mean, std=p.std, interpolation=p.interpolation)


def _default_params() -> Any:
    from nemo_frames.images.preprocess import ClipPreprocess

    return ClipPreprocess()


def _nullable(values: Sequence[Any], valid: np.ndarray, dtype: Any, index: pd.Index) -> pd.Series:
    out = pd.Series(pd.array([None] * len(index), dtype=dtype), index=index)
    if valid.any():
        out[valid] = pd.array(list(values), dtype=dtype)
    return out


class Score:
    """The fused scoring stage (see :func:`score`)."""

    name: ClassVar[str] = "score"

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config
        self.timings: dict[str, float] = {}

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        cols = self.config.output_columns(has_embedding=S.EMBEDDING in meta.columns)
        out = ensure_ledger(meta).drop(columns=[c for c in cols if c in meta.columns])
        add = {c: pd.Series([], dtype=_COLUMNS[c]) for c in cols}
        out = out.assign(**add)
        if S.IMAGE_BYTES in out.columns and not self.config.keep_bytes:
            out = out.drop(columns=[S.IMAGE_BYTES])
        elif self.config.keep_bytes and S.IMAGE_BYTES not in out.columns:
            out = out.assign(**{S.IMAGE_BYTES: pd.Series([], dtype=S.pandas_dtype(S.IMAGE_BYTES))})
        # Order: input columns, then new ones, then the ledger last.
        ledger = [S.STATUS, S.ERROR, S.REASON]
        return out[[c for c in out.columns if c not in ledger] + ledger]

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        cfg = self.config
        meta = self.meta(df.iloc[:0])
        df = ensure_ledger(df)
        if len(df) == 0:
            return meta
        had_bytes = S.IMAGE_BYTES in df.columns
        t0 = time.perf_counter()
        if cfg.needs_pixels or cfg.content_hash:
            if not had_bytes:
                from nemo_frames.io.fetch import fetch_image_bytes

                df = fetch_image_bytes(df, storage_options=cfg.storage_options)
        self.timings = {"fetch_s": time.perf_counter() - t0}
        ok = (df[S.STATUS] == Status.OK.value).to_numpy()
        blobs = df[S.IMAGE_BYTES].tolist() if S.IMAGE_BYTES in df.columns else [None] * len(df)
        idx = df.index
        new: dict[str, pd.Series] = {}

        if cfg.content_hash:
            from nemo_frames.images.metrics import content_hash

            hashes = [content_hash(blobs[i]) for i in np.flatnonzero(ok)]
            new[S.CONTENT_HASH] = _nullable(hashes, ok, STRING, idx)

        if cfg.needs_pixels:
            df, ok, px = self._pixels(df, ok, blobs)
            new.update(px)
        blobs.clear()

        if cfg.aesthetic is not None or cfg.nsfw is not None:
            emb_col = new.get(S.EMBEDDING, df[S.EMBEDDING] if S.EMBEDDING in df.columns else None)
            has = emb_col.notna().to_numpy() & ok
            mat = to_matrix(emb_col[has]) if has.any() else None
            for col, kind, path in ((S.AESTHETIC_SCORE, "aesthetic", cfg.aesthetic), (S.NSFW_SCORE, "nsfw", cfg.nsfw)):
                if path is None:
                    continue
                out = pd.Series(np.nan, index=idx, dtype="float32")
                if mat is not None:
                    try:
                        out.iloc[np.flatnonzero(has)] = _head(kind, path).score(mat).astype("float32")  # type: ignore[arg-type]
                    except ValueError as exc:
                        raise ValueError(f"score: {kind} head on column 'embedding': {exc}") from exc
                new[col] = out
        df = df.drop(columns=[c for c in new if c in df.columns]).assign(**new)
        if not cfg.keep_bytes and S.IMAGE_BYTES in df.columns:
            df = df.drop(columns=[S.IMAGE_BYTES])
        return df[list(meta.columns)].astype(meta.dtypes.to_dict())

    def _pixels(self, df: pd.DataFrame, ok: np.ndarray, blobs: list[Any]) -> tuple[pd.DataFrame, np.ndarray, dict[str, pd.Series]]:
        """Decode, pixel operators and CLIP, chunk by chunk; returns (df with decode errors marked, ok, columns).

        Rows go through in chunks of the CLIP batch (64 without CLIP): decode, the pixel
        operators on the full decode, then the CLIP crop. Only one chunk of decoded images
        is alive at a time, whatever the partition size. With ``prefetch``, a helper
        thread prepares chunk k+1 while the model embeds chunk k (decoders and torch
        release the GIL).
        """
        from concurrent.futures import ThreadPoolExecutor

        from nemo_frames.images.decode import DecodeError, decode_image

        cfg = self.config
        t0 = time.perf_counter()
        n = len(df)
        idx = df.index
        target = None
        params = None
        embedder = None
        if cfg.clip is not None:
            from nemo_frames.images.preprocess import preprocess_batch
            from nemo_frames.models.clip import get_embedder

            embedder = get_embedder(cfg.clip)
            params = _preprocess_params(embedder)
            if not (cfg.blur or cfg.qr):
                target = params.decode_target
        if cfg.blur or cfg.qr or cfg.phash:
            from nemo_frames.images import metrics as M
        width = np.zeros(n, np.int32)
        height = np.zeros(n, np.int32)
        blur = np.full(n, np.nan, np.float32)
        qr = np.full(n, np.nan, np.float32)
        ph = np.zeros(n, np.uint64)
        errs: dict[int, DecodeError] = {}
        t_prepare = 0.0

        on_device = cfg.decoder == "nvjpeg"
        if on_device:
            from nemo_frames.images.device_preprocess import decode_preprocess_on_device

            if embedder is not None:
                decode_device = str(embedder.device)
            else:
                from nemo_frames.backend import gpu_available

                decode_device = "cuda" if gpu_available() else "cpu"

        def prepare(rows: np.ndarray) -> tuple[list[int], Any]:
            nonlocal t_prepare
            t = time.perf_counter()
            good: list[int] = []
            imgs = []
            batch = None
            if on_device:
                # Decoded and preprocessed on the device in one go; the batch stays there for the model.
                res, batch = decode_preprocess_on_device(
                    [blobs[i] for i in rows], params or _default_params(), device=decode_device,
                    max_pixels=cfg.max_pixels, preprocess=embedder is not None,
                )
                items: list[tuple[int, Any]] = list(zip(rows.tolist(), res, strict=True))
            else:
                items = []
                for i in rows:
                    try:
                        items.append((int(i), decode_image(blobs[i], target=target, max_pixels=cfg.max_pixels)))
                    except DecodeError as exc:
                        items.append((int(i), exc))
            for i, d in items:
                if isinstance(d, DecodeError):
                    errs[i] = d
                    continue
                width[i], height[i] = d.width, d.height
                if cfg.blur or cfg.qr or cfg.phash:
                    # Device-decoded pixels come to the host only for the CPU operators that need them.
                    rgb = d.rgb if isinstance(d.rgb, np.ndarray) else d.rgb.cpu().numpy()
                    if cfg.blur:
                        blur[i] = M.blur_score(rgb)
                    if cfg.qr:
                        qr[i] = M.qr_area_ratio(rgb)
                    if cfg.phash:
                        ph[i] = M.phash(rgb)
                good.append(i)
                if embedder is not None:
                    imgs.append(d)
            if imgs and not on_device:
                batch = preprocess_batch(imgs, params, resample=cfg.resample)
            t_prepare += time.perf_counter() - t
            return good, batch

        rows = np.flatnonzero(ok)
        step = cfg.clip.batch_size if embedder is not None else 64
        chunks = [rows[s : s + step] for s in range(0, len(rows), step)]
        emb_rows: list[int] = []
        emb_parts: list[np.ndarray] = []
        t_embed = 0.0

        def embed(good: list[int], batch: Any) -> None:
            nonlocal t_embed
            if batch is None or embedder is None:
                return
            t = time.perf_counter()
            emb_parts.append(embedder.embed_images(batch))
            emb_rows.extend(good)
            t_embed += time.perf_counter() - t

        if cfg.prefetch and embedder is not None and len(chunks) > 1:
            with ThreadPoolExecutor(1, thread_name_prefix="nf-score-prefetch") as pool:
                pending = pool.submit(prepare, chunks[0])
                for k in range(len(chunks)):
                    good, batch = pending.result()
                    if k + 1 < len(chunks):
                        pending = pool.submit(prepare, chunks[k + 1])
                    embed(good, batch)
        else:
            for c in chunks:
                embed(*prepare(c))

        if errs:
            for code in {e.code for e in errs.values()}:
                mask = np.zeros(n, bool)
                mask[[i for i, e in errs.items() if e.code == code]] = True
                msgs = pd.Series([errs[i].message if i in errs else "" for i in range(n)], index=idx)
                df = mark_error(df, mask, code, msgs)
            ok = (df[S.STATUS] == Status.OK.value).to_numpy()
        good = np.flatnonzero(ok)
        out: dict[str, pd.Series] = {
            S.WIDTH: _nullable(width[good].tolist(), ok, _COLUMNS[S.WIDTH], idx),
            S.HEIGHT: _nullable(height[good].tolist(), ok, _COLUMNS[S.HEIGHT], idx),
        }
        if cfg.blur:
            out[S.BLUR_SCORE] = pd.Series(blur, index=idx)
        if cfg.qr:
            out[S.QR_AREA_RATIO] = pd.Series(qr, index=idx)
        if cfg.phash:
            out[S.PHASH] = _nullable(ph[good].tolist(), ok, "UInt64", idx)
        if embedder is not None:
            emb = np.concatenate(emb_parts) if emb_parts else np.zeros((0, embedder.dim), np.float32)
            # Embeddings are in input row order (ascending rows within a chunk, chunks in order).
            if emb_rows != good.tolist():
                raise RuntimeError("score: internal error: embeddings out of step with the ok rows")
            out[S.EMBEDDING] = from_matrix(emb, index=idx, valid=ok)
            if cfg.text:
                caps = df[S.CAPTION].astype(object).where(df[S.CAPTION].notna(), "").tolist()
                texts = [str(caps[i]) for i in good]
                bs = cfg.clip.batch_size
                tchunks = [embedder.embed_texts(texts[s : s + bs]) for s in range(0, len(texts), bs)]
                temb = np.concatenate(tchunks) if tchunks else np.zeros((0, embedder.dim), np.float32)
                out[S.TEXT_EMBEDDING] = from_matrix(temb, index=idx, valid=ok)
                sc = pd.Series(np.nan, index=idx, dtype="float32")
                sc.iloc[good] = np.einsum("ij,ij->i", emb, temb).astype("float32")
                out[S.CLIP_SCORE] = sc
        self.timings.update(pixels_s=time.perf_counter() - t0, prepare_s=t_prepare, clip_s=t_embed)
        return df, ok, out


def score(
    df: dd.DataFrame | pd.DataFrame,
    *,
    clip: Any = None,
    text: bool = False,
    aesthetic: PathLike | None = None,
    nsfw: PathLike | None = None,
    blur: bool = True,
    qr: bool = False,
    phash: bool = True,
    content_hash: bool = True,
    max_pixels: int = 89_478_485,
    keep_bytes: bool = False,
    prefetch: bool = True,
    storage_options: dict[str, Any] | None = None,
    decoder: Literal["cpu", "nvjpeg"] = "cpu",
    config: ScoreConfig | None = None,
) -> dd.DataFrame | pd.DataFrame:
    """Score a sample table in one fused pass (decode each image once).

    Parameters
    ----------
    df : dask or pandas DataFrame
        A sample table (from :func:`nemo_frames.read_webdataset`, or a Parquet checkpoint of one).
    clip : ClipConfig or dict, optional
        ``{"model": "ViT-L-14", "pretrained": "/path/to/weights.safetensors"}``: compute ``embedding``.
    text : bool
        Embed captions too and compute ``clip_score``.
    aesthetic, nsfw : path, optional
        Head weights (LAION aesthetic V2/V1, LAION NSFW detector).
    blur, qr, phash, content_hash : bool
        Pixel operators.
    prefetch : bool
        Prepare the next CLIP batch in a helper thread while the model runs (same results).
    decoder : {"cpu", "nvjpeg"}
        Where JPEGs are decoded and preprocessed: the CPU fast path, or torchvision's nvJPEG on the
        CLIP model's device (see :class:`ScoreConfig`).
    config : ScoreConfig, optional
        All of the above in one object (keyword arguments are ignored when given).

    Returns
    -------
    Same kind as ``df``, with the score columns added. Rows that fail (fetch, decode, bomb) are
    marked ``error`` with their code; nothing is dropped.

    Examples
    --------
    >>> from nemo_frames import read_webdataset, score  # doctest: +SKIP
    >>> scored = score(read_webdataset("shards/*.tar"), clip={"model": "ViT-B-32",
    ...                "pretrained": "/models/vit-b-32.safetensors"}, aesthetic="sac+logos+ava1-l14-linearMSE.pth")  # doctest: +SKIP
    >>> scored.blur_score.describe().compute()  # doctest: +SKIP
    """
    cfg = config or ScoreConfig(
        clip=clip,
        text=text,
        aesthetic=aesthetic,
        nsfw=nsfw,
        blur=blur,
        qr=qr,
        phash=phash,
        content_hash=content_hash,
        max_pixels=max_pixels,
        keep_bytes=keep_bytes,
        prefetch=prefetch,
        storage_options=storage_options,
        decoder=decoder,
    )
    stage = Score(cfg)
    if isinstance(df, pd.DataFrame):
        return stage.transform(df)
    return df.map_partitions(stage.transform, meta=stage.meta(df._meta))
