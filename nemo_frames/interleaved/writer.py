"""Writers of item tables: MINT-1T-style WebDataset shards and item-table Parquet.

Both write each input partition as one *unit* through the commit protocol
(:mod:`nemo_frames.io.commit`): files go to temporary names and are renamed, a done
marker ``_done/{unit}.json`` is created exclusively, a rerun skips units with a
marker (without reading their input) and refuses a different config. Output bytes
depend only on the partition's content: GNU tar headers with fixed mtime, uid,
gid and mode; samples in input order (or by ``sample_id`` with ``sort=True``); JSON keys in a
fixed order.

Only ``ok`` rows are written to the data files. Every other row goes to
``{unit}.drops.parquet`` (``sample_id``, positions, ``modality``, ``source_ref``,
``nf_status``, ``nf_error``, ``nf_reason``, without bytes; ``ledger=False`` leaves it out), and
the counts to ``{unit}.stats.json`` and the run-level ``stats.json``. What other tools read (the
JSON of each document, the Parquet of ``ok`` rows) carries no ledger column.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Literal
from urllib.parse import quote

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_frames import schema as S
from nemo_frames.interleaved import schema as IS
from nemo_frames.interleaved.materialize import materialize as _materialize
from nemo_frames.interleaved.ops import ensure_item_ledger, item_counts, merge_item_counts, renumber
from nemo_frames.interleaved.reader import ITEM_FIELDS_KEY, JSON_COLUMN
from nemo_frames.io.commit import Committer
from nemo_frames.io.export import TAR_MTIME, tar_header
from nemo_frames.schema import Status

_BLOCK = 512
_RECORD = 20 * _BLOCK
RUN_FILES = ("stats.json",)
_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/tiff": "tiff", "image/webp": "webp", "image/gif": "gif",
        "image/bmp": "bmp", "image/avif": "avif"}
_DROP_COLUMNS = [IS.SAMPLE_ID, IS.POSITION, IS.INPUT_POSITION, IS.MODALITY, IS.CONTENT_TYPE, IS.SOURCE_REF,
                 IS.MATERIALIZE_ERROR, S.STATUS, S.ERROR, S.REASON]
_NOT_PASSTHROUGH = set(IS.RESERVED) | set(IS.LEDGER_TYPES) | {JSON_COLUMN}


def escape_id(sample_id: str) -> str:
    """The member stem for a sample id: percent-encoding of every character but ``[A-Za-z0-9_~-]``.

    NeMo Curator's writer does the same (``urllib.parse.quote(id, safe="")``) but keeps dots;
    we encode them too (``%2E``) because WebDataset readers cut the key at the first dot of a
    member's basename. The original id is stored in the JSON (``sample_id``).

    Examples
    --------
    >>> escape_id("a/b:c.d")
    'a%2Fb%3Ac%2Ed'
    """
    return quote(sample_id, safe="").replace(".", "%2E")


def ext_for(content_type: Any, data: bytes | None = None) -> str:
    """Member extension for an image item: from ``content_type``, else sniffed from the bytes, else ``bin``."""
    ct = content_type if isinstance(content_type, str) else None
    if ct:
        ct = ct.split(";", 1)[0].strip().lower()
        if ct in _EXT:
            return _EXT[ct]
        import mimetypes

        guess = mimetypes.guess_extension(ct)
        if guess:
            return guess.lstrip(".").replace("jpeg", "jpg")
    if data:
        from nemo_frames.images.decode import sniff_format

        fmt = sniff_format(data)
        if fmt:
            return {"JPEG": "jpg"}.get(fmt, fmt.lower())
    return "bin"


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, np.generic):
        return _json_value(v.item())
    if isinstance(v, (bytes, bytearray)):
        raise TypeError("binary values cannot be written to the JSON")
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    return v


def _tar_bytes(members: list[tuple[str, bytes]]) -> Callable[[IO[bytes]], None]:
    def write(f: IO[bytes]) -> None:
        pos = 0
        for name, data in members:
            h = tar_header(name, len(data))
            pad = (-len(data)) % _BLOCK
            f.write(h)
            f.write(data)
            f.write(b"\0" * pad)
            pos += len(h) + len(data) + pad
        end = pos + 2 * _BLOCK
        end += (-end) % _RECORD
        f.write(b"\0" * (end - pos))

    return write


def items_to_arrow(pdf: pd.DataFrame) -> pa.Table:
    """An item-table partition as Arrow: reserved and ledger columns with canonical types (large types kept),
    passthrough columns as they are (pandas strings as ``string``)."""
    canon = IS.arrow_schema_overrides()
    arrays, fields = [], []
    for c in pdf.columns:
        col = pdf[c]
        arr = pa.array(col) if isinstance(col.dtype, pd.ArrowDtype) else pa.array(col, from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        want = canon.get(c)
        if want is not None:
            keep_large = (pa.types.is_large_string(arr.type) and pa.types.is_string(want)) and isinstance(col.dtype, pd.ArrowDtype)
            if not keep_large and arr.type != want:
                arr = arr.cast(want)
        elif pa.types.is_large_string(arr.type) and not isinstance(col.dtype, pd.ArrowDtype):
            arr = arr.cast(pa.string())  # pandas' string[pyarrow] is large_string in memory; write it as string
        arrays.append(arr)
        fields.append(pa.field(c, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def expand_json_column(pdf: pd.DataFrame) -> pd.DataFrame:
    """The ``json`` column (sidecar keys kept as one JSON object) as one column per key, nested values as
    nested Arrow values (struct / list), so another reader sees ``{"a": [1, 2]}`` and not a string.

    A key becomes a column only when Arrow holds its values exactly (``to_pylist`` gives them back:
    e.g. dicts with different key sets would gain null keys as a struct) and its name is free;
    the other keys stay in ``json``, which is dropped when nothing is left in it.
    """
    if JSON_COLUMN not in pdf.columns:
        return pdf
    docs = [json.loads(v) if isinstance(v, str) and v else None for v in pdf[JSON_COLUMN].tolist()]
    keys = sorted({k for d in docs if isinstance(d, dict) for k in d})
    out = pdf.copy()
    rest: list[dict[str, Any]] = [dict(d) if isinstance(d, dict) else {} for d in docs]
    for k in keys:
        if k in out.columns or k in IS.RESERVED or k in IS.LEDGER_TYPES:
            continue
        vals = [d.get(k) if isinstance(d, dict) else None for d in docs]
        try:
            arr = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            continue
        if pa.types.is_null(arr.type) or arr.to_pylist() != vals:
            continue
        out[k] = pd.Series(arr, index=out.index, dtype=pd.ArrowDtype(arr.type))
        for r in rest:
            r.pop(k, None)
    left = [json.dumps(r, ensure_ascii=False, sort_keys=True) if r else None for r in rest]
    if any(v is not None for v in left):
        out[JSON_COLUMN] = pd.Series(left, index=out.index, dtype=pdf[JSON_COLUMN].dtype)
    else:
        out = out.drop(columns=[JSON_COLUMN])
    return out


def _parquet_bytes(table: pa.Table, compression: str, row_group_size: int) -> bytes:
    buf = io.BytesIO()
    # Image bytes are (nearly) all distinct: dictionary-encoding them costs time and saves nothing.
    dict_cols = [c for c in table.column_names if c != IS.BINARY_CONTENT]
    pq.write_table(table, buf, compression=compression, row_group_size=row_group_size, use_dictionary=dict_cols)
    return buf.getvalue()


def _drops_bytes(pdf: pd.DataFrame) -> bytes:
    d = pdf[pdf[S.STATUS] != Status.OK.value]
    d = d[[c for c in _DROP_COLUMNS if c in d.columns]].reset_index(drop=True)
    return _parquet_bytes(items_to_arrow(d), "zstd", 128_000)


# --------------------------------------------------------------------------- WebDataset
def _sample_doc(
    sid: str, rows: list[int], cols: dict[str, list[Any]], passthrough: list[str]
) -> list[tuple[str, bytes]]:
    """The tar members of one sample (images first, then the JSON) from column lists and its row numbers."""
    stem = escape_id(sid)
    mod, pos_col = cols[IS.MODALITY], cols[IS.POSITION]
    meta_rows = [r for r in rows if mod[r] == "metadata"]
    content = sorted((r for r in rows if mod[r] != "metadata"), key=lambda r: pos_col[r])
    n = int(pos_col[content[-1]]) + 1 if content else 0
    texts: list[Any] = [None] * n
    images: list[Any] = [None] * n
    members: list[tuple[str, bytes]] = []
    for r in content:
        pos, m = int(pos_col[r]), mod[r]
        if m == "text":
            t = cols[IS.TEXT_CONTENT][r]
            texts[pos] = None if t is None or t is pd.NA else str(t)
        elif m == "image":
            data = bytes(cols[IS.BINARY_CONTENT][r])
            name = f"{stem}.{pos}.{ext_for(cols[IS.CONTENT_TYPE][r], data)}"
            images[pos] = name
            members.append((name, data))
        else:
            raise ValueError(
                f"write_interleaved_webdataset: sample {sid!r} position {pos}: modality {m!r} cannot be written "
                f"(expected one of {list(IS.MODALITIES)}); filter or mark these rows first"
            )
    doc: dict[str, Any] = {"sample_id": sid, "texts": texts, "images": images}
    if meta_rows:
        r0 = meta_rows[0]
        for c in passthrough:
            v = _json_value(cols[c][r0])
            if v is not None:
                doc[c] = v
        extra = cols[JSON_COLUMN][r0] if JSON_COLUMN in cols else None
        if isinstance(extra, str) and extra:
            for k, v in sorted(json.loads(extra).items()):
                doc.setdefault(k, v)
    per_item: dict[str, list[Any]] = {}
    for c in passthrough:
        vals = [(int(pos_col[r]), _json_value(cols[c][r])) for r in content]
        if any(v is not None for _, v in vals):
            aligned: list[Any] = [None] * n
            for p_, v in vals:
                aligned[p_] = v
            per_item[c] = aligned
    if per_item:
        doc[ITEM_FIELDS_KEY] = per_item
    members.append((f"{stem}.json", json.dumps(doc, ensure_ascii=False).encode("utf-8")))
    return members


def sample_members(sample: pd.DataFrame, passthrough: list[str]) -> tuple[str, list[tuple[str, bytes]]]:
    """The tar members of one sample's rows (images first, then the JSON) and its member stem."""
    cols = {c: sample[c].tolist() for c in sample.columns}
    sid = str(cols[IS.SAMPLE_ID][0])
    return escape_id(sid), _sample_doc(sid, list(range(len(sample))), cols, passthrough)


@dataclass
class _Job:
    committer: Committer
    kind: Literal["webdataset", "parquet"]
    samples_per_shard: int
    materialize: bool
    rows: Literal["ok", "all"]
    storage_options: dict[str, Any] | None
    compression: str
    row_group_size: int
    sort: bool = False
    ledger: bool = True


def _prepare(pdf: pd.DataFrame, job: _Job) -> pd.DataFrame:
    pdf = ensure_item_ledger(IS.canonicalize(pdf, where=f"write_interleaved_{job.kind}"))
    if job.materialize:
        pdf = _materialize(pdf, storage_options=job.storage_options)
    # A failed fetch drops an item: renumber so the written sample has no hole, and drop emptied samples.
    return IS.arrange_items(renumber(pdf), sort=job.sort)


def _write_unit(pdf: pd.DataFrame, p: int, job: _Job) -> dict[str, Any]:
    c = job.committer
    unit = f"{p:05d}"
    pdf = _prepare(pdf, job)
    counts = item_counts(pdf)
    ok = pdf[pdf[S.STATUS] == Status.OK.value]
    files: dict[str, Any] = {}
    shards: list[str] = []
    if job.kind == "webdataset":
        passthrough = [col for col in pdf.columns if col not in _NOT_PASSTHROUGH]
        ok = ok[ok[IS.SAMPLE_ID].notna()].reset_index(drop=True)
        # Column lists once per partition: per-sample pandas indexing costs ~10 ms a sample.
        cols = {c: ok[c].tolist() for c in [IS.SAMPLE_ID, IS.POSITION, IS.MODALITY, IS.TEXT_CONTENT, IS.BINARY_CONTENT,
                                             IS.CONTENT_TYPE, *passthrough, *([JSON_COLUMN] if JSON_COLUMN in ok else [])]}
        groups: dict[str, list[int]] = {}
        for r, sid in enumerate(cols[IS.SAMPLE_ID]):
            groups.setdefault(sid, []).append(r)
        order = sorted(groups) if job.sort else list(groups)  # dicts keep first appearance: input order
        for j in range(0, len(order), job.samples_per_shard):
            members: list[tuple[str, bytes]] = []
            for sid in order[j : j + job.samples_per_shard]:
                members.extend(_sample_doc(sid, groups[sid], cols, passthrough))
            name = f"{unit}-{j // job.samples_per_shard:04d}.tar"
            files[name] = _tar_bytes(members)
            shards.append(name)
    else:
        out = (ok if job.rows == "ok" else pdf).reset_index(drop=True)
        if job.rows == "ok":
            # A clean item table for other readers: NeMo Curator copies every non-reserved column into
            # each document's JSON, so our bookkeeping stays out of it (the ledger is in drops.parquet).
            out = expand_json_column(out.drop(columns=[c for c in IS.LEDGER_TYPES if c in out.columns]))
        files[f"{unit}.parquet"] = _parquet_bytes(items_to_arrow(out), job.compression, job.row_group_size)
        shards.append(f"{unit}.parquet")
    if job.ledger:
        files[f"{unit}.drops.parquet"] = _drops_bytes(pdf)
    stats = {"unit": unit, "files": shards, **counts}
    files[f"{unit}.stats.json"] = (json.dumps(stats, sort_keys=True, indent=1) + "\n").encode("utf-8")
    r = c.write(unit, files, counts=stats)
    return r.marker.get("counts", stats)


def _write(
    df: dd.DataFrame | pd.DataFrame, path: str, job_kw: dict[str, Any], *, stage: str, config: dict[str, Any],
    storage_options: dict[str, Any] | None, overwrite: bool,
) -> WriteResult:
    if isinstance(df, pd.DataFrame):
        df = dd.from_pandas(df, npartitions=1, sort=False)
    missing = [col for col in IS.REQUIRED if col not in df.columns]
    if missing:
        raise ValueError(f"{stage}: the table has no {missing} column(s); expected an item table")
    config = {**config, "npartitions": df.npartitions, "columns": list(map(str, df.columns))}
    committer = Committer(path, stage=stage, config=config, storage_options=storage_options, overwrite=overwrite,
                          run_files=RUN_FILES)
    job = _Job(committer=committer, **job_kw)
    parts = df.to_delayed()
    units = [f"{p:05d}" for p in range(len(parts))]
    todo = [p for p in range(len(parts)) if not committer.done(units[p])]
    tasks = [dask.delayed(_write_unit, pure=True)(parts[p], p, job) for p in todo]
    dask.compute(*tasks)
    markers = committer.markers()
    per_unit = [markers[u]["counts"] for u in units if u in markers]
    total = merge_item_counts(per_unit)
    files = [f for u in per_unit for f in u["files"]]
    run = {"config_hash": committer.config_hash, "units": len(units), "files": files, **total}
    committer.publish("stats.json", (json.dumps(run, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    return WriteResult(path=committer.url, files=files, written=len(todo), skipped=len(units) - len(todo), stats=run)


@dataclass
class WriteResult:
    """What a writer did: output URL, data files, units written now / skipped (done earlier), run stats."""

    path: str
    files: list[str]
    written: int
    skipped: int
    stats: dict[str, Any]


def write_interleaved_webdataset(
    df: dd.DataFrame | pd.DataFrame,
    path: str,
    *,
    samples_per_shard: int = 1000,
    storage_options: dict[str, Any] | None = None,
    read_storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    sort: bool = False,
    ledger: bool = True,
) -> WriteResult:
    """Write the ``ok`` rows of an item table as MINT-1T-style WebDataset shards.

    Per sample: one member per image, ``{id}.{position}.{ext}`` (``ext`` from
    ``content_type``), then ``{id}.json`` holding ``sample_id``, the parallel ``texts`` /
    ``images`` lists (null where the other modality sits), the metadata row's passthrough
    values, the keys of its ``json`` column, and per-item passthrough values under
    ``nf_item_fields`` (lists aligned to positions). ``{id}`` is :func:`escape_id`.
    Image bytes come from ``binary_content`` or are fetched by ``source_ref``; a row whose
    bytes cannot be had is recorded in ``drops.parquet`` and its sample renumbered.

    Output: ``{partition:05d}-{k:04d}.tar`` (at most ``samples_per_shard`` samples each,
    in input order, or by ``sample_id`` with ``sort=True``), ``{partition:05d}.drops.parquet``
    (the ledger of the rows not written; ``ledger=False`` leaves it out), ``{partition:05d}.stats.json``,
    ``_done/``, ``_config.json``, ``stats.json``. GNU tar, fixed mtime/uid/gid/mode:
    identical input gives byte-identical shards. Rerunning skips partitions already done.
    The JSON holds no ledger column (``nf_status``, ``nf_error``, ``nf_reason``, ``nf_input_position``).

    Examples
    --------
    >>> items = read_interleaved_parquet("mint-parquet/")  # doctest: +SKIP
    >>> write_interleaved_webdataset(items, "mint-wds/", samples_per_shard=500).stats["samples_ok"]  # doctest: +SKIP
    """
    if samples_per_shard < 1:
        raise ValueError(f"write_interleaved_webdataset: samples_per_shard must be >= 1, found {samples_per_shard}")
    job = {"kind": "webdataset", "samples_per_shard": samples_per_shard, "materialize": True, "rows": "ok",
           "storage_options": read_storage_options if read_storage_options is not None else storage_options,
           "compression": "", "row_group_size": 0, "sort": sort, "ledger": ledger}
    config = {"format": "interleaved-webdataset", "version": 1, "samples_per_shard": samples_per_shard,
              "tar": {"format": "gnu", "mtime": TAR_MTIME}, "sort": sort, "ledger": ledger}
    return _write(df, path, job, stage="write-interleaved-webdataset", config=config,
                  storage_options=storage_options, overwrite=overwrite)


def write_interleaved_parquet(
    df: dd.DataFrame | pd.DataFrame,
    path: str,
    *,
    materialize: bool = True,
    rows: Literal["ok", "all"] = "ok",
    compression: str = "snappy",
    row_group_size: int = 128_000,
    storage_options: dict[str, Any] | None = None,
    read_storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    sort: bool = False,
    ledger: bool = True,
) -> WriteResult:
    """Write an item table as Parquet, one file per partition (``{partition:05d}.parquet``), one row per item.

    Parameters
    ----------
    materialize : bool
        Fetch missing image bytes into ``binary_content`` so the files stand alone (default,
        as NeMo Curator's writer). ``False`` writes locators only (an index of the shards).
    rows : {"ok", "all"}
        Write only ``ok`` rows without the ledger columns (default: a clean item table for
        NeMo Curator and other readers: the reserved columns and the user's columns only), or
        every row with its ledger columns (our checkpoint). Non-ok rows also go to
        ``{partition:05d}.drops.parquet``. With ``"ok"``, the keys of the ``json`` column become
        columns holding nested values (struct / list) where Arrow keeps them exactly.
    compression, row_group_size
        Parquet options (defaults as NeMo Curator's writer).
    sort : bool
        Write samples sorted by ``sample_id``; default: input order (shard order, then place).
    ledger : bool
        Write ``{partition:05d}.drops.parquet`` (the ledger of the rows not written). NeMo
        Curator's directory listing takes every ``*.parquet``: pass it the data files, or use
        ``ledger=False`` for a directory that holds data only (counts stay in ``stats.json``).

    Examples
    --------
    >>> items = read_interleaved_webdataset("mint/{00000..00009}.tar")  # doctest: +SKIP
    >>> write_interleaved_parquet(items, "mint-parquet/").stats["samples_ok"]  # doctest: +SKIP
    """
    if rows not in ("ok", "all"):
        raise ValueError(f"write_interleaved_parquet: rows must be 'ok' or 'all', found {rows!r}")
    job = {"kind": "parquet", "samples_per_shard": 0, "materialize": materialize, "rows": rows,
           "storage_options": read_storage_options if read_storage_options is not None else storage_options,
           "compression": compression, "row_group_size": row_group_size, "sort": sort, "ledger": ledger}
    config = {"format": "interleaved-parquet", "version": 1, "materialize": materialize, "rows": rows,
              "compression": compression, "row_group_size": row_group_size, "sort": sort, "ledger": ledger}
    return _write(df, path, job, stage="write-interleaved-parquet", config=config,
                  storage_options=storage_options, overwrite=overwrite)


__all__ = ["WriteResult", "escape_id", "expand_json_column", "ext_for", "items_to_arrow", "write_interleaved_parquet",
           "write_interleaved_webdataset"]
