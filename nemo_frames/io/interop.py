"""Reading the folders other tools write, as they are: img2dataset output and clip-retrieval embeddings.

**img2dataset** (``--output_format webdataset``) writes, per shard ``{n:05d}`` of a folder:
``{n}.tar`` (``{key}.jpg``, ``{key}.txt``, ``{key}.json`` for each *successful* sample),
``{n}.parquet`` (one row per *input* row, failures included: the input columns such as
``url`` and ``caption``, then ``key``, ``status``, ``error_message``, ``width``, ``height``,
``original_width``, ``original_height``, optionally ``exif`` and ``sha256``) and
``{n}_stats.json`` (``count``, ``successes``, ``failed_to_download``, ``failed_to_resize``,
``status_dict``, ...). :func:`read_img2dataset` reads the tars with the scan pass and puts
every failed row of the Parquet in the ledger (``status`` / ``error_message`` mapped onto
``nf_status`` / ``nf_error``), in the Parquet's row order.

**clip-retrieval** (``clip-retrieval inference``) writes ``img_emb/img_emb_{i}.npy`` (float16,
L2-normalised, one row per image) and ``metadata/metadata_{i}.parquet`` (``image_path``:
the WebDataset key or the file path; ``caption``; the flattened JSON metadata), row ``j`` of
one describing row ``j`` of the other. :func:`read_clip_retrieval_embeddings` reads them into
the ``embedding`` column (dimension and norm checked) and :func:`join_embeddings` attaches
them to a sample table by key.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from typing import Any

import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_frames import schema as S
from nemo_frames.io.webdataset import ScanConfig, _meta, rows_to_frame, scan_shard
from nemo_frames.ledger import STRING
from nemo_frames.schema import ErrorCode, Status, error_text

IMG2DATASET_ERRORS: dict[str, ErrorCode] = {
    "failed_to_download": ErrorCode.FETCH_ERROR,
    "failed_to_resize": ErrorCode.DECODE_ERROR,
}
"""img2dataset ``status`` → our error code (any other non-``success`` status: ``fetch_error``)."""
_I2D_LEDGER = ("status", "error_message")
_NOT_FIELDS = {S.KEY, S.CAPTION, S.SOURCE, S.IMAGE_MEMBER, S.IMAGE_OFFSET, S.IMAGE_SIZE, S.JSON, S.MEMBERS, S.STATUS,
               S.ERROR, S.REASON, *_I2D_LEDGER}


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    return None


def _ls(fs: fsspec.AbstractFileSystem, root: str, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    try:
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if rx.fullmatch(n.rstrip("/").rsplit("/", 1)[-1]))


def _i2d_shards(folder: str, storage_options: dict[str, Any] | None) -> list[tuple[str, str | None, str | None]]:
    """(stem URL, tar URL or None, parquet URL or None) per shard, by stem."""
    fs, root = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    root = root.rstrip("/")
    by: dict[str, dict[str, str]] = {}
    for p in _ls(fs, root, r"[^_.][^/]*\.(tar|parquet)"):
        base = p.rsplit("/", 1)[-1]
        stem, ext = base.rsplit(".", 1)
        by.setdefault(stem, {})[ext] = fs.unstrip_protocol(p) if "://" in folder else p
    return [(stem, d.get("tar"), d.get("parquet")) for stem, d in sorted(by.items())]


def _i2d_fields(shards: list[tuple[str, str | None, str | None]], storage_options: dict[str, Any] | None) -> dict[str, str]:
    """Sidecar field kinds from the first shard Parquet's schema (the tars' JSON holds the same keys)."""
    for _, _, pqt in shards:
        if pqt is None:
            continue
        with fsspec.open(pqt, "rb", **(storage_options or {})) as f:
            schema = pq.read_schema(f)
        out = {}
        for fld in schema:
            k = _kind(fld.type)
            if k and fld.name not in _NOT_FIELDS:
                out[fld.name] = k
        return out
    return {}


def _i2d_partition(
    shard: tuple[str, str | None, str | None], cfg: ScanConfig, fields: dict[str, str],
    storage_options: dict[str, Any] | None,
) -> pd.DataFrame:
    _, tar, pqt = shard
    meta = _meta(cfg, fields)
    scanned = scan_shard(tar, cfg, fields, storage_options) if tar is not None else []
    if pqt is None:
        return _core_types(rows_to_frame(scanned, meta))
    with fsspec.open(pqt, "rb", **(storage_options or {})) as f:
        table = pq.read_table(f)
    recs = table.to_pylist()
    by_key: dict[str, dict[str, Any]] = {}
    loose: list[dict[str, Any]] = []  # shard-level error rows (no key), kept as the scan made them
    for r in scanned:
        k = r.get(S.KEY)
        if k is None:
            loose.append(r)
        else:
            by_key.setdefault(k, r)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    source = tar or pqt
    for rec in recs:
        key = None if rec.get("key") is None else str(rec["key"])
        status = rec.get("status")
        if status == "success" and key in by_key and key not in used:
            used.add(key)
            rows.append(by_key[key])
            continue
        row: dict[str, Any] = {c: rec.get(c) for c in meta.columns if c in rec and c not in (S.STATUS, S.ERROR, S.REASON)}
        row[S.KEY] = key
        row[S.SOURCE] = source
        row[S.REASON] = None
        row[S.STATUS] = Status.ERROR.value
        if status == "success":
            why = "duplicate key in the Parquet" if key in used else "no such sample in the tar"
            row[S.ERROR] = error_text(ErrorCode.MISSING_MEMBER, f"img2dataset reports {key!r} as success, but {why} ({tar})")
        else:
            code = IMG2DATASET_ERRORS.get(str(status), ErrorCode.FETCH_ERROR)
            row[S.ERROR] = error_text(code, f"img2dataset {status}: {rec.get('error_message')}")
        rows.append(row)
    # Samples in the tar that the Parquet does not list: kept (the tar is the data), after the listed ones.
    rows.extend(r for k, r in by_key.items() if k not in used)
    rows.extend(loose)
    return _core_types(rows_to_frame(rows, meta))


def _core_types(df: pd.DataFrame) -> pd.DataFrame:
    """Sidecar fields that are core sample-table columns (``width``, ``height``) get the core dtype (int32)."""
    for c in df.columns:
        if c in S.SAMPLE_ARROW_TYPES and c not in _NOT_FIELDS:
            t = S.SAMPLE_ARROW_TYPES[c]
            # Nullable: failed rows have no size.
            df[c] = df[c].astype(f"Int{t.bit_width}" if pa.types.is_integer(t) else S.pandas_dtype(c))
    return df


def read_img2dataset(
    folder: str,
    *,
    storage_options: dict[str, Any] | None = None,
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp"),
    max_member_size: int = 256 << 20,
    max_sidecar_size: int = 4 << 20,
) -> dd.DataFrame:
    """Read an img2dataset output folder (WebDataset format) as it is: tars + per-shard Parquet.

    One partition per shard, rows in the Parquet's order (img2dataset's input order). A
    successful sample is the tar's sample (locators, caption, sidecar fields typed from the
    Parquet's schema); a row that img2dataset could not download or resize is an ``error``
    row with ``nf_error`` = ``fetch_error: img2dataset failed_to_download: <error_message>``
    (``failed_to_resize`` → ``decode_error``), carrying its ``url``, ``caption`` and the other
    Parquet values. A ``success`` row missing from the tar is a ``missing_member`` error.
    ``status`` and ``error_message`` are not columns: the ledger holds them. The run's
    counts are :func:`img2dataset_stats`.

    Parameters
    ----------
    folder : str
        img2dataset's ``--output_folder`` (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options.
    image_extensions, max_member_size, max_sidecar_size
        As :func:`nemo_frames.io.webdataset.read_webdataset`.

    Examples
    --------
    >>> import nemo_frames as nf  # doctest: +SKIP
    >>> df = nf.read_img2dataset("laion-100k/")  # doctest: +SKIP
    >>> df.nf_error.str.split(":").str[0].value_counts().compute()  # doctest: +SKIP
    >>> nf.img2dataset_stats("laion-100k/")["failed_to_download"]  # doctest: +SKIP
    """
    shards = _i2d_shards(folder, storage_options)
    if not shards:
        raise FileNotFoundError(
            f"read_img2dataset: no shard (*.tar / *.parquet) in {folder!r}; pass img2dataset's --output_folder "
            "(written with --output_format webdataset)"
        )
    fields = _i2d_fields(shards, storage_options)
    cfg = ScanConfig(image_extensions=tuple(e.lower() for e in image_extensions), max_member_size=max_member_size,
                     max_sidecar_size=max_sidecar_size, fields=tuple(sorted(fields.items())))
    return dd.from_map(
        _i2d_partition, shards, cfg=cfg, fields=fields, storage_options=storage_options,
        meta=_core_types(_meta(cfg, fields)), label="read-img2dataset", enforce_metadata=False,
    )


def img2dataset_stats(folder: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's counts from img2dataset's ``{n}_stats.json`` files, added up.

    Returns ``{"shards", "count", "successes", "failed_to_download", "failed_to_resize",
    "status_dict"}`` (``status_dict``: error message → count, merged).

    Examples
    --------
    >>> img2dataset_stats("laion-100k/")["successes"]  # doctest: +SKIP
    """
    fs, root = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    out: dict[str, Any] = {"shards": 0, "count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    status: Counter[str] = Counter()
    for p in _ls(fs, root.rstrip("/"), r"[^/]*_stats\.json"):
        with fs.open(p, "rb") as f:
            st = json.loads(f.read())
        out["shards"] += 1
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            out[k] += int(st.get(k) or 0)
        status.update({str(k): int(v) for k, v in (st.get("status_dict") or {}).items()})
    out["status_dict"] = dict(sorted(status.items()))
    return out


# --------------------------------------------------------------------------- clip-retrieval
def _numbered(fs: fsspec.AbstractFileSystem, root: str, prefix: str, ext: str) -> dict[int, str]:
    out = {}
    for p in _ls(fs, root, rf"{prefix}_(\d+)\.{ext}"):
        out[int(p.rsplit("_", 1)[-1].split(".", 1)[0])] = p
    return out


def _clip_partition(
    pair: tuple[str, str], *, storage_options: dict[str, Any] | None, key_column: str, dim: int | None,
    norm_tolerance: float, renormalize: bool, like: pd.DataFrame,
) -> pd.DataFrame:
    npy, mpq = pair
    so = storage_options or {}
    with fsspec.open(npy, "rb", **so) as f:
        emb = np.load(io.BytesIO(f.read()), allow_pickle=False)
    with fsspec.open(mpq, "rb", **so) as f:
        md = pq.read_table(f).to_pandas(types_mapper=_types_mapper, ignore_metadata=True)
    where = f"read_clip_retrieval_embeddings({npy})"
    if emb.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D array (images × dimension), found shape {emb.shape}")
    if emb.shape[0] != len(md):
        raise ValueError(
            f"{where}: {emb.shape[0]} embeddings but {len(md)} rows in {mpq}; clip-retrieval writes them row-aligned, "
            "so these files do not belong together (a partial or mixed output folder)"
        )
    if dim is not None and emb.shape[1] != dim:
        raise ValueError(f"{where}: embedding dimension {emb.shape[1]}, expected {dim} (another CLIP model?)")
    x = emb.astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    if renormalize:
        x = x / np.where(norms > 0, norms, 1.0)[:, None]
    else:
        bad = np.flatnonzero(np.abs(norms - 1.0) > norm_tolerance)
        if len(bad):
            raise ValueError(
                f"{where}: {len(bad)} of {len(x)} embeddings are not unit vectors (row {bad[0]}: L2 norm "
                f"{norms[bad[0]]:.4f}, tolerance {norm_tolerance}); clip-retrieval writes normalised embeddings, so "
                "check the folder, or pass renormalize=True"
            )
    if key_column not in md.columns:
        raise ValueError(f"{where}: {mpq} has no {key_column!r} column (found {list(md.columns)[:12]}); pass key_column=")
    out = md.rename(columns={key_column: S.KEY}) if key_column != S.KEY else md
    out[S.KEY] = out[S.KEY].astype(STRING)
    from nemo_frames.backend import from_matrix

    out[S.EMBEDDING] = from_matrix(x, index=out.index, name=S.EMBEDDING)
    out = out[[c for c in like.columns if c in out.columns]]
    for c in like.columns:
        if c not in out.columns:
            out[c] = pd.Series(pd.NA, index=out.index, dtype=like[c].dtype)
    return out[list(like.columns)]


def _types_mapper(t: pa.DataType) -> Any:
    from nemo_frames.io.parquet import types_mapper

    return types_mapper(t)


def read_clip_retrieval_embeddings(
    folder: str,
    *,
    key_column: str = "image_path",
    dim: int | None = None,
    norm_tolerance: float = 1e-2,
    renormalize: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dd.DataFrame:
    """Read clip-retrieval's embeddings folder: ``img_emb/img_emb_{i}.npy`` + ``metadata/metadata_{i}.parquet``.

    One partition per ``.npy`` file; row ``j`` of ``img_emb_{i}.npy`` is row ``j`` of
    ``metadata_{i}.parquet`` (checked: equal lengths). Columns: ``key`` (from ``key_column``:
    ``image_path`` is the WebDataset key when clip-retrieval read a WebDataset), the
    metadata columns, and ``embedding`` (``list<float32>``, upcast from clip-retrieval's float16).

    Parameters
    ----------
    key_column : str
        The metadata column naming the sample (``image_path``; or ``key`` / ``url`` from the
        flattened JSON metadata).
    dim : int, optional
        Expected embedding dimension (e.g. 768 for ViT-L/14): a mismatch raises.
    norm_tolerance : float
        Largest allowed ``|‖e‖ − 1|``; float16 storage gives about 1e-3.
    renormalize : bool
        Normalise every row instead of checking the norms.

    Examples
    --------
    >>> import nemo_frames as nf  # doctest: +SKIP
    >>> emb = nf.read_clip_retrieval_embeddings("embeddings/", dim=768)  # doctest: +SKIP
    >>> df = nf.join_embeddings(nf.read_img2dataset("laion-100k/"), emb)  # doctest: +SKIP
    """
    fs, root = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    root = root.rstrip("/")
    embs = _numbered(fs, f"{root}/img_emb", "img_emb", "npy")
    mds = _numbered(fs, f"{root}/metadata", "metadata", "parquet")
    if not embs:
        raise FileNotFoundError(
            f"read_clip_retrieval_embeddings: no img_emb/img_emb_<i>.npy under {folder!r}; pass the --output_folder of "
            "clip-retrieval inference (run with image embeddings enabled)"
        )
    lonely = sorted(set(embs) ^ set(mds))
    if lonely:
        raise ValueError(
            f"read_clip_retrieval_embeddings: {folder!r}: parts {lonely} have an embedding file without metadata or the "
            "reverse; clip-retrieval writes both for every part"
        )
    proto = "://" in str(folder)
    pairs = [(fs.unstrip_protocol(embs[i]) if proto else embs[i], fs.unstrip_protocol(mds[i]) if proto else mds[i])
             for i in sorted(embs)]
    with fsspec.open(pairs[0][1], "rb", **(storage_options or {})) as f:
        schema = pq.read_schema(f)
    if key_column not in schema.names:
        raise ValueError(
            f"read_clip_retrieval_embeddings: {pairs[0][1]} has no {key_column!r} column (found {schema.names[:12]}); "
            "pass key_column="
        )
    meta = schema.empty_table().to_pandas(types_mapper=_types_mapper, ignore_metadata=True)
    meta = meta.rename(columns={key_column: S.KEY}) if key_column != S.KEY else meta
    meta[S.KEY] = meta[S.KEY].astype(STRING)
    meta[S.EMBEDDING] = pd.Series([], dtype=pd.ArrowDtype(S.EMBEDDING_TYPE))
    meta = meta[[S.KEY, *[c for c in meta.columns if c != S.KEY]]]
    return dd.from_map(
        _clip_partition, pairs, storage_options=storage_options, key_column=key_column, dim=dim,
        norm_tolerance=norm_tolerance, renormalize=renormalize, like=meta, meta=meta, label="read-clip-retrieval",
        enforce_metadata=False,
    )


def join_embeddings(
    samples: dd.DataFrame, embeddings: dd.DataFrame | pd.DataFrame, *, on: str = S.KEY,
    column: str = S.EMBEDDING, overwrite: bool = False,
) -> dd.DataFrame:
    """Attach ``embeddings[column]`` to ``samples`` by ``on`` (a left join: rows keep their order and partitions).

    The embedding table is collected into one key → row index (keys and a float32 matrix:
    about 3 KB per 768-d embedding) and looked up in each partition, so the sample table is
    never shuffled (list columns must not go through a pandas shuffle). A sample without an
    embedding gets a null one; a key repeated in the embeddings raises.

    Examples
    --------
    >>> df = join_embeddings(read_img2dataset("laion/"), read_clip_retrieval_embeddings("emb/"))  # doctest: +SKIP
    >>> df.embedding.isna().sum().compute()  # doctest: +SKIP
    """
    if column in samples.columns and not overwrite:
        raise ValueError(f"join_embeddings: the sample table already has {column!r}; pass overwrite=True to replace it")
    emb = embeddings.compute() if isinstance(embeddings, dd.DataFrame) else embeddings
    keys = emb[on].astype(object)
    dup = keys[keys.duplicated()]
    if len(dup):
        raise ValueError(f"join_embeddings: key {dup.iloc[0]!r} appears {int((keys == dup.iloc[0]).sum())} times in the embeddings")
    from nemo_frames.backend import to_matrix

    mat = to_matrix(emb[column]) if len(emb) else np.zeros((0, 0), np.float32)
    index = {k: i for i, k in enumerate(keys.tolist())}
    meta = samples._meta.drop(columns=[column], errors="ignore").assign(
        **{column: pd.Series([], dtype=pd.ArrowDtype(S.EMBEDDING_TYPE))})
    return samples.map_partitions(_attach, index, mat, on=on, column=column, meta=meta)


def _attach(pdf: pd.DataFrame, index: dict[Any, int], mat: np.ndarray, *, on: str, column: str) -> pd.DataFrame:
    rows = [index.get(k, -1) if k is not None else -1 for k in pdf[on].astype(object).where(pdf[on].notna(), None).tolist()]
    vals = [mat[r].tolist() if r >= 0 else None for r in rows]
    out = pdf.drop(columns=[column], errors="ignore").copy()
    out[column] = pd.Series(pa.array(vals, type=S.EMBEDDING_TYPE), index=pdf.index, dtype=pd.ArrowDtype(S.EMBEDDING_TYPE))
    return out


__all__ = ["IMG2DATASET_ERRORS", "img2dataset_stats", "join_embeddings", "read_clip_retrieval_embeddings",
           "read_img2dataset"]
