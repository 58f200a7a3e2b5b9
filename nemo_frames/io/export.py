"""Export: reshard the kept rows of a sample table into WebDataset tars + Parquet + DALI index + stats.

Layout of an output directory (``i`` = output shard number)::

    {i:05d}.tar          GNU tar, the samples' original member bytes, copied (never re-encoded)
    {i:05d}.parquet      the same samples' metadata, with locators into {i:05d}.tar
    {i:05d}.idx          DALI index (``write_index=True``), format of DALI's tools/wds2idx.py (v1.2)
    {i:05d}.stats.json   counts of this shard (samples, bytes, members, export errors)
    _done/{i:05d}.json   the commit marker: a shard is part of the output only once this exists
    _config.json         the export config hash (resume refuses a different one)
    _stats.json          run-level ledger counts: every input row as written / filtered / error
    _errors.parquet      the errored rows (input errors and export errors): key, source, nf_error, error_code

Run-level files start with ``_`` (skipped by pyarrow.dataset, Spark and Hive readers). Dask's
directory reader keeps every ``*.parquet``, so read the shards' tables with
``read_parquet(f"{out}/[0-9]*.parquet")``.

Determinism: output shard ``i`` holds the kept rows at global positions
``[i * samples_per_shard, (i + 1) * samples_per_shard)`` in input order (partition
order, then row order). A cheap first pass counts the kept rows of every input
partition, so shard contents depend only on the data, never on scheduling, the
number of workers, or how the rows are split into partitions.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import dask
import dask.callbacks
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_frames.io.commit import DEFAULT_CHECKSUM, Checksum, Committer
from nemo_frames.io.parquet import arrow_column
from nemo_frames.ledger import counts, ensure_ledger, merge_counts, reason_name
from nemo_frames.schema import (
    ERROR,
    IMAGE_BYTES,
    IMAGE_MEMBER,
    IMAGE_OFFSET,
    IMAGE_SIZE,
    KEY,
    MEMBERS,
    REASON,
    SOURCE,
    STATUS,
    ErrorCode,
    Status,
    error_code,
    error_text,
)

STAGE = "export-webdataset"
KEY_RULE = "v2"  # v2: a safe key that looks like a sanitised name is sanitised too (never collides)
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: a constant, so identical input gives identical bytes
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile/GNU tar pad archives to whole 10 KiB records
_SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")
_SAFE_EXT_RE = re.compile(r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$")
_SANITISED_RE = re.compile(r"_[0-9a-f]{12}$")  # the suffix safe_key gives the keys it changes
RUN_FILES = ("_stats.json", "_errors.parquet")
ORIG_KEY, ORIG_SOURCE, ORIG_IMAGE_MEMBER, ORIG_IMAGE_OFFSET = (
    "orig_key",
    "orig_source",
    "orig_image_member",
    "orig_image_offset",
)
_STRING = pd.StringDtype("pyarrow")


class ExportError(RuntimeError):
    """A sample could not be exported and ``on_error="raise"`` was asked for."""


def safe_key(key: str) -> str:
    """The tar key used for ``key`` in exported shards.

    A key made only of ``[A-Za-z0-9_-]`` and at most 80 characters is kept as is.
    Any other key (with ``/``, ``..``, dots, spaces, non-ASCII, or too long) becomes
    its characters outside that set replaced by ``_``, cut to 64 characters, plus
    ``_`` and the first 12 hex digits of the sha256 of the original key. Dots must
    go because WebDataset readers split the member name at the first dot of the
    basename (``a.b.jpg`` would read as key ``a``, extension ``b.jpg``); the hash
    keeps two keys that differ only in replaced characters distinct. A safe key that
    itself ends in ``_`` + 12 lower-case hex digits is changed the same way, so a real key
    can never equal another key's sanitised name. The original key stays in the Parquet
    column ``orig_key``.

    Examples
    --------
    >>> safe_key("000123")
    '000123'
    >>> safe_key("img.v1/../x")
    'img_v1____x_20f15bcef0ff'
    >>> safe_key("img_v1____x_20f15bcef0ff")  # a real key shaped like a sanitised one
    'img_v1____x_20f15bcef0ff_ae0d37ba14e3'
    """
    if _SAFE_KEY_RE.match(key) and not _SANITISED_RE.search(key):
        return key
    base = re.sub(r"[^A-Za-z0-9_\-]", "_", key)[:64]
    return f"{base}_{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def tar_header(name: str, size: int) -> bytes:
    """The GNU tar header of a regular member (with ``././@LongLink`` blocks for names over 100 bytes)."""
    raw = name.encode("utf-8")
    if len(raw) <= 100 and size < 8**11:
        # Fast path for the usual case, byte-identical to tarfile's GNU header (checked by a test).
        head = bytearray(_HEADER_TEMPLATE)
        head[0 : len(raw)] = raw
        size_field = b"%011o\0" % size
        head[124:136] = size_field
        # The checksum is the byte sum of the header with its own field as spaces: the template's sum
        # (zeros where name and size go) plus the bytes filled in.
        head[148:156] = b"%06o\0 " % (_HEADER_SUM + sum(raw) + sum(size_field))
        return bytes(head)
    return _tar_header_slow(name, size)


def _tar_header_slow(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    # GNU format: DALI's tar reader rejects PAX headers; long names use GNU ././@LongLink.
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def _header_template() -> bytes:
    # A header with every constant field filled in and the checksum field as 8 spaces, as the checksum
    # is computed; the name and size fields are zero, so adding them later only adds their bytes.
    h = bytearray(_tar_header_slow("x", 0))
    h[0:100] = b"\0" * 100
    h[124:136] = b"\0" * 12
    h[148:156] = b" " * 8
    return bytes(h)


@dataclass
class _Plan:
    """Where every member of a shard goes, computed before writing.

    Built in one pass over the samples: the tar as a list of buffers (headers, member bytes
    as views into the fetch buffers, padding) for one ``writev``, and per sample its
    members in tar order, its DALI index line and its ``nf_members`` text.
    """

    members: list[list[tuple[str, bytes, int, int]]]  # per sample: (ext, header, data_offset, size)
    total: int
    buffers: list[bytes | bytearray | memoryview] = field(default_factory=list)
    index_lines: list[str] = field(default_factory=list)
    member_texts: list[str] = field(default_factory=list)
    member_bytes: int = 0


_HEADER_TEMPLATE = _header_template()
_HEADER_SUM = sum(_HEADER_TEMPLATE)
_ZEROS = memoryview(bytes(2 * _RECORD))  # longer than any padding: the end of an archive is < 2 records


def _plan(keys: Sequence[str], blobs: Sequence[Mapping[str, bytes | memoryview] | Sequence[tuple[str, bytes | memoryview]]]) -> _Plan:
    """Lay out a shard: ``blobs[i]`` maps extension to bytes (in tar order) for sample ``keys[i]``."""
    pos = 0
    out: list[list[tuple[str, bytes, int, int]]] = []
    bufs: list[bytes | bytearray | memoryview] = []
    index_lines: list[str] = []
    texts: list[str] = []
    member_bytes = 0
    append = bufs.append
    for key, items in zip(keys, blobs, strict=True):
        row = []
        idx = []
        locs = []
        for ext, data in items.items() if isinstance(items, Mapping) else items:
            name = f"{key}.{ext}"
            size = len(data)
            header = tar_header(name, size)
            off = pos + len(header)
            row.append((ext, header, off, size))
            idx.append(f"{ext} {off} {size} {name}")
            # json.dumps({ext: [off, size], ...}) with its default separators; extensions are
            # [a-z0-9_.-] (checked before planning), so they need no escaping.
            locs.append(f'"{ext}": [{off}, {size}]')
            append(header)
            append(data)
            pad = (-size) % _BLOCK
            if pad:
                append(_ZEROS[:pad])
            pos = off + size + pad
            member_bytes += size
        out.append(row)
        index_lines.append(" ".join(idx))
        texts.append("{" + ", ".join(locs) + "}")
    end = pos + 2 * _BLOCK
    end += (-end) % _RECORD
    append(_ZEROS[: end - pos])
    return _Plan(out, end, bufs, index_lines, texts, member_bytes)


def _tar_writer(plan: _Plan) -> Any:
    def write(f: IO[bytes]) -> None:
        # The planned buffers go to the writer's writev: no member byte is copied in Python on the way.
        writev = getattr(f, "writev", None)
        if writev is not None:
            writev(plan.buffers)
        else:
            for b in plan.buffers:
                f.write(b)

    return write


def dali_index(keys: Sequence[str], plan: _Plan) -> bytes:
    """The DALI WebDataset index (``v1.2``) of a planned shard.

    First line ``v1.2 <samples>``; then one line per sample listing, for each member
    in tar order, ``<ext> <data offset> <size> <member name>``, space separated
    (the format written by DALI's ``tools/wds2idx.py``; offsets point at the member
    data, after its header).
    """
    return (f"v1.2 {len(keys)}\n" + "".join(line + "\n" for line in plan.index_lines)).encode("utf-8")


def _members_of(pdf: pd.DataFrame) -> list[str | None]:
    """``nf_members`` per row; rows without it get their image locator as the only member."""
    n = len(pdf)
    has = pdf[MEMBERS].tolist() if MEMBERS in pdf.columns else [None] * n
    # tolist() first: iterating Arrow-backed columns element by element costs microseconds per value.
    if all(isinstance(m, str) and m for m in has):
        return has
    out: list[str | None] = []
    for m, member, off, size in zip(
        has,
        pdf[IMAGE_MEMBER].tolist() if IMAGE_MEMBER in pdf.columns else [None] * n,
        pdf[IMAGE_OFFSET].tolist() if IMAGE_OFFSET in pdf.columns else [None] * n,
        pdf[IMAGE_SIZE].tolist() if IMAGE_SIZE in pdf.columns else [None] * n,
        strict=True,
    ):
        if isinstance(m, str) and m:
            out.append(m)
        elif isinstance(member, str) and not pd.isna(off) and not pd.isna(size):
            ext = member.rsplit("/", 1)[-1].split(".", 1)[-1].lower()
            out.append(json.dumps({ext: [int(off), int(size)]}))
        else:
            out.append(None)
    return out


def _object_strings(s: pd.Series) -> np.ndarray:
    """A text column as an object array of ``str`` / None (the values the fingerprint hashes)."""
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.na_value is pd.NA:
        return s.to_numpy(dtype=object, na_value=None)  # already str values: skip the per-value str()
    return np.asarray([None if v is None or v is pd.NA else str(v) for v in s.tolist()], dtype=object)


def _fingerprints(pdf: pd.DataFrame) -> np.ndarray:
    """One uint64 per row from its scalar columns: the input fingerprint that resume checks."""
    cols: dict[str, Any] = {}
    for c in sorted(map(str, pdf.columns)):
        if c in (STATUS, ERROR, REASON, IMAGE_BYTES):
            continue
        s = pdf[c]
        if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
            cols[c] = s.to_numpy(dtype="float64", na_value=np.nan)
        elif pd.api.types.is_string_dtype(s.dtype) or s.dtype == object:
            cols[c] = _object_strings(s)
    if not cols or not len(pdf):
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_pandas_object(pd.DataFrame(cols), index=False).to_numpy(dtype=np.uint64)


def _ledger_counts(pdf: pd.DataFrame) -> dict[str, Any]:
    """:func:`nemo_frames.ledger.counts` of a partition, counting statuses in Arrow instead of Python."""
    status = pdf[STATUS]
    if not isinstance(status.dtype, pd.StringDtype) or status.dtype.na_value is not pd.NA or status.hasnans:
        return counts(pdf)
    by_status = {str(k): int(v) for k, v in status.value_counts(sort=False).items() if v}
    err = pdf.loc[(status == Status.ERROR.value).to_numpy(dtype=bool), ERROR]
    flt = pdf.loc[(status == Status.FILTERED.value).to_numpy(dtype=bool), REASON]
    errors = Counter(c for c in map(error_code, err) if c)
    reasons = Counter(r for r in map(reason_name, flt) if r)
    return {
        "samples": len(pdf),
        "by_status": dict(sorted(by_status.items())),
        "errors_by_code": dict(sorted(errors.items())),
        "filtered_by_reason": dict(sorted(reasons.items())),
    }


def _survey(pdf: pd.DataFrame) -> dict[str, Any]:
    pdf = ensure_ledger(pdf)
    status = pdf[STATUS]
    ok = (status == Status.OK.value).to_numpy(dtype=bool, na_value=False)
    is_err = (status == Status.ERROR.value).to_numpy(dtype=bool, na_value=False)
    errors = []
    if is_err.any():
        err = pdf[is_err]
        errors = [
            {"key": _str(k), "source": _str(s), "nf_error": _str(e), "stage": "input"}
            for k, s, e in zip(
                err[KEY] if KEY in err else [None] * len(err),
                err[SOURCE] if SOURCE in err else [None] * len(err),
                err[ERROR],
                strict=True,
            )
        ]
    n_ok = int(ok.sum())
    return {
        "counts": _ledger_counts(pdf),
        "n_ok": n_ok,
        "fp": _fingerprints(pdf if n_ok == len(pdf) else pdf[ok]),
        "errors": errors,
    }


def _str(v: Any) -> str | None:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _pieces(pdf: pd.DataFrame, start: int, per_shard: int, wanted: frozenset[int]) -> dict[int, pd.DataFrame]:
    pdf = ensure_ledger(pdf)
    ok = pdf[(pdf[STATUS] == Status.OK.value).to_numpy(dtype=bool, na_value=False)]
    shard = (start + np.arange(len(ok))) // per_shard
    return {int(i): ok[shard == i] for i in np.unique(shard) if int(i) in wanted}


@dataclass
class _ShardJob:
    committer: Committer
    per_shard: int
    write_index: bool
    write_parquet: bool
    members: tuple[str, ...] | None
    read_storage_options: dict[str, Any] | None
    on_error: str
    ledger_columns: bool = False


def _write_shard(job: _ShardJob, i: int, parts: list[dict[int, pd.DataFrame]]) -> dict[str, Any]:
    from nemo_frames.io.fetch import fetch_member_lists

    name = f"{i:05d}"
    c = job.committer
    frames = [p[i] for p in parts if i in p]
    pdf = frames[0] if len(frames) == 1 else (pd.concat(frames) if frames else pd.DataFrame())
    n = len(pdf)
    member_text = _members_of(pdf)
    row_keys = pdf[KEY].tolist()
    row_sources = pdf[SOURCE].tolist() if SOURCE in pdf else [None] * n
    errors: list[dict[str, Any]] = []

    def fail(row: int, code: ErrorCode, msg: str) -> None:
        text = error_text(code, f"export: {msg}")
        if job.on_error == "raise":
            raise ExportError(
                f"export: sample {row_keys[row]!r} from {row_sources[row] or '?'} "
                f"could not be written to shard {name}: {text}. Pass on_error='record' to record such rows "
                "in _errors.parquet and continue."
            )
        errors.append({"key": _str(row_keys[row]), "source": _str(row_sources[row]), "nf_error": text,
                       "stage": "export"})

    located = [j for j, m in enumerate(member_text) if m is not None]
    data: list[dict[str, memoryview] | None] = [None] * n
    fetch_err: list[str | None] = [None] * n
    if located:
        if len(located) == n:
            srcs, texts = row_sources, member_text
        else:
            srcs, texts = [row_sources[j] for j in located], [member_text[j] for j in located]
        got, why = fetch_member_lists(srcs, texts, exts=list(job.members) if job.members else None,
                                      storage_options=job.read_storage_options, views=True)
        for j, g, w in zip(located, got, why, strict=True):
            data[j], fetch_err[j] = g, w

    kept: list[int] = []
    keys: list[str] = []
    blobs: list[dict[str, memoryview]] = []
    seen: set[str] = set()
    safe_ext: dict[str, bool] = {}
    for row in range(n):
        got = data[row]
        if got is None:
            if member_text[row] is None:
                fail(row, ErrorCode.MISSING_MEMBER, "row has no member locators (nf_members / image_offset are null)")
            else:
                fail(row, ErrorCode.FETCH_ERROR, str(fetch_err[row]))
            continue
        # The fetched members are those of nf_members, in its order, restricted to job.members.
        if not got:
            fail(row, ErrorCode.MISSING_MEMBER, f"members {list(job.members or [])} not found")
            continue
        if any(e != e.lower() for e in got):
            # IMG_0001.JPG: loaders match extensions case-sensitively ("jpg"), so the output is lower-case.
            lowered = {e.lower(): v for e, v in got.items()}
            if len(lowered) < len(got):
                fail(row, ErrorCode.DUPLICATE_KEY,
                     f"member extensions {list(got)} coincide once lower-cased; rename one of them")
                continue
            got = lowered
        bad = []
        for e in got:
            ok = safe_ext.get(e)
            if ok is None:
                ok = safe_ext[e] = bool(_SAFE_EXT_RE.match(e))
            if not ok:
                bad.append(e)
        if bad:
            fail(row, ErrorCode.UNSAFE_MEMBER, f"member extensions {bad} are not [a-z0-9_-] (dot-separated)")
            continue
        k = safe_key(str(row_keys[row]))
        if k in seen:
            fail(row, ErrorCode.DUPLICATE_KEY, f"key {k!r} already written in shard {name}")
            continue
        seen.add(k)
        kept.append(row)
        keys.append(k)
        blobs.append(got)

    plan = _plan(keys, blobs)
    tar_url = c.url_of(f"{name}.tar")
    files: dict[str, Any] = {f"{name}.tar": _tar_writer(plan)}
    if job.write_parquet:
        # Built lazily, after the tar is written: the tar's fsync (started by the committer) overlaps it.
        files[f"{name}.parquet"] = lambda f: f.write(_parquet_bytes(pdf, kept, keys, plan, tar_url,
                                                                               ledger_columns=job.ledger_columns))
    if job.write_index:
        files[f"{name}.idx"] = dali_index(keys, plan)
    by_ext = Counter(e for b in blobs for e in b)
    stats = {
        "shard": name,
        "samples": len(keys),
        "tar_bytes": plan.total,
        "member_bytes": plan.member_bytes,
        "members_by_ext": dict(sorted(by_ext.items())),
        "input_positions": [i * job.per_shard, i * job.per_shard + n],
        "export_errors_by_code": dict(sorted(Counter(error_code(e["nf_error"]) for e in errors).items())),
        "errors": errors,
    }
    files[f"{name}.stats.json"] = (json.dumps(stats, sort_keys=True, indent=1) + "\n").encode("utf-8")
    c.write(name, files, counts={"samples": len(keys), "errors": len(errors), "tar_bytes": plan.total},
            durable_marker=False)
    return stats


_NEW_LOCATORS = (KEY, SOURCE, IMAGE_MEMBER, IMAGE_OFFSET, IMAGE_SIZE, MEMBERS)
_ORIG = (ORIG_KEY, ORIG_SOURCE, ORIG_IMAGE_MEMBER, ORIG_IMAGE_OFFSET)


def _parquet_bytes(pdf: pd.DataFrame, kept: list[int], keys: list[str], plan: _Plan, tar_url: str, *,
                   ledger_columns: bool = False) -> bytes:
    """The shard's Parquet file: the kept rows' columns with the new locators, the old ones as ``orig_*``.

    Columns: the input's (without ``image_bytes`` and old ``orig_*``) in their order, the locator
    columns replaced in place (or appended when absent), then ``orig_key``, ``orig_source``,
    ``orig_image_member``, ``orig_image_offset``. Built column by column in Arrow.
    """
    n = len(keys)

    def col(c: str) -> pd.Series:
        s = pdf[c]
        return s if len(kept) == len(pdf) else s.take(kept)

    image_ext = []
    for member in col(IMAGE_MEMBER).tolist() if IMAGE_MEMBER in pdf.columns else [None] * n:
        image_ext.append(member.rsplit("/", 1)[-1].split(".", 1)[-1].lower() if isinstance(member, str) else None)
    new_member, new_off, new_size = [], [], []
    for key, row, ext in zip(keys, plan.members, image_ext, strict=True):
        for e, _, off, size in row:
            if e == ext:
                new_member.append(f"{key}.{ext}")
                new_off.append(off)
                new_size.append(size)
                break
        else:
            new_member.append(None)
            new_off.append(None)
            new_size.append(None)
    new = {
        KEY: pa.array(keys, pa.string()),
        SOURCE: pa.array([tar_url] * n, pa.string()),
        IMAGE_MEMBER: pa.array(new_member, pa.string()),
        IMAGE_OFFSET: pa.array(new_off, pa.int64()),
        IMAGE_SIZE: pa.array(new_size, pa.int64()),
        MEMBERS: pa.array(plan.member_texts, pa.string()),
    }
    names: list[str] = []
    arrays: list[pa.Array] = []
    for c in pdf.columns:
        if c == IMAGE_BYTES or c in _ORIG or (not ledger_columns and c in (STATUS, ERROR, REASON)):
            continue
        names.append(str(c))
        arrays.append(new[c] if c in new else arrow_column(col(c), str(c)))
    for c in _NEW_LOCATORS:
        if c not in pdf.columns:
            names.append(c)
            arrays.append(new[c])

    def orig(c: str, dtype: Any) -> pa.Array:
        s = col(c).astype(dtype) if c in pdf.columns else pd.Series(pd.NA, index=range(n), dtype=dtype)
        return arrow_column(s, c)

    for c, src, dtype in ((ORIG_KEY, KEY, _STRING), (ORIG_SOURCE, SOURCE, _STRING),
                          (ORIG_IMAGE_MEMBER, IMAGE_MEMBER, _STRING), (ORIG_IMAGE_OFFSET, IMAGE_OFFSET, "Int64")):
        names.append(c)
        a = orig(src, dtype)
        arrays.append(a)
    table = pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(nm, a.type) for nm, a in zip(names, arrays, strict=True)]))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


@dataclass
class ExportResult:
    """What :func:`write_webdataset` wrote.

    Attributes
    ----------
    path : str
        The output directory URL.
    shards : list of str
        Names of all output shards (``"00000"``, ...), done now or by an earlier run.
    written, skipped : int
        Shards written by this call, and shards already committed by an earlier run.
    samples : int
        Samples in the output (all shards).
    tar_bytes : int
        Bytes of all output tars.
    stats : dict
        The run-level ``_stats.json`` content.
    config_hash : str
        Hash of the export config (``_config.json``).
    """

    path: str
    shards: list[str]
    written: int
    skipped: int
    samples: int
    tar_bytes: int
    config_hash: str
    stats: dict[str, Any] = field(default_factory=dict)


def write_webdataset(
    df: dd.DataFrame | pd.DataFrame,
    path: str,
    *,
    samples_per_shard: int = 1000,
    members: Sequence[str] | None = None,
    write_index: bool = False,
    write_parquet: bool = True,
    storage_options: dict[str, Any] | None = None,
    read_storage_options: dict[str, Any] | None = None,
    on_error: Literal["record", "raise"] = "record",
    overwrite: bool = False,
    progress: bool = True,
    fsync: bool = True,
    checksum: Checksum = DEFAULT_CHECKSUM,
    ledger_columns: bool = False,
) -> ExportResult:
    """Write the ``ok`` rows of a sample table as WebDataset shards + Parquet + stats.

    Parameters
    ----------
    df : dask or pandas DataFrame
        A sample table with locators (``source`` + ``nf_members``, or ``image_member`` /
        ``image_offset`` / ``image_size``) and the ledger columns. Only rows with
        ``nf_status == "ok"`` are written; the others are counted in ``_stats.json``
        and, when errored, listed in ``_errors.parquet``.
    path : str
        Output directory, local or fsspec URL (``s3://bucket/prefix``).
    samples_per_shard : int
        Samples per output shard (the last shard holds the rest).
    members : sequence of str, optional
        Member extensions to copy (e.g. ``["jpg", "txt"]``); default all, in source order.
    write_index : bool
        Also write a DALI index ``{i:05d}.idx`` per shard.
    write_parquet : bool
        Write ``{i:05d}.parquet`` with the shard's metadata and new locators.
    ledger_columns : bool
        Keep ``nf_status`` / ``nf_error`` / ``nf_reason`` in the shards' Parquet. Off by default: every
        exported row is ``ok``, the ledger lives in the run's ``table/``, ``_stats.json`` and
        ``_errors.parquet``, and the shards are for other readers, which should see the data and the
        user's fields, not our bookkeeping. ``nf_members`` (every member's offset in the new tar, a
        locator) stays.
    storage_options : dict, optional
        fsspec options for ``path``.
    read_storage_options : dict, optional
        fsspec options for reading the input shards (default: ``storage_options``).
    on_error : {"record", "raise"}
        What to do with a kept row that cannot be exported (bytes unreadable,
        member missing, duplicate key in a shard): record it in the shard's stats and
        ``_errors.parquet`` and go on, or raise :class:`ExportError` (its shard is not
        committed). Rows already marked ``error`` upstream are always recorded.
    overwrite : bool
        Delete an earlier export in ``path`` first (needed when the config or input changed).
    progress : bool
        Show a progress bar of shards written.
    fsync : bool
        fsync each file before publishing it (local output). Turning it off is safe
        against killed processes and workers, not against a machine crash.
    checksum : {"xxh3_64", "crc32", "sha256"}
        Checksum of every file recorded in its shard's done marker (the marker names
        the algorithm). It does not change any output file, so a run may resume an
        export whose markers used another algorithm.

    Returns
    -------
    ExportResult

    Notes
    -----
    Each shard's files are published with the commit protocol
    (:mod:`nemo_frames.io.commit`): rerunning after a crash skips shards with a done
    marker and rewrites the others, so no sample is lost or duplicated. The config
    hash covers the options that shape the bytes and a fingerprint of the kept rows
    (keys, locators and scalar columns, in order); resuming with other input raises
    :class:`~nemo_frames.io.commit.ConfigMismatchError`.

    Tar members: ``{safe_key}.{ext}`` (see :func:`safe_key`), a sample's members adjacent
    and in source order, GNU format, mode 0644, uid/gid 0, empty owner names, mtime
    2000-01-01. Identical input gives byte-identical files.

    Examples
    --------
    >>> from nemo_frames.io.webdataset import read_webdataset  # doctest: +SKIP
    >>> df = read_webdataset("data/{00000..00009}.tar")  # doctest: +SKIP
    >>> df = df[df.caption.str.len() > 0]  # doctest: +SKIP
    >>> write_webdataset(df, "out/", samples_per_shard=500, write_index=True).samples  # doctest: +SKIP
    4211
    """
    if samples_per_shard < 1:
        raise ValueError(f"write_webdataset: samples_per_shard must be >= 1, found {samples_per_shard}")
    if on_error not in ("record", "raise"):
        raise ValueError(f"write_webdataset: on_error must be 'record' or 'raise', found {on_error!r}")
    if isinstance(df, pd.DataFrame):
        df = dd.from_pandas(df, npartitions=1, sort=False)
    if KEY not in df.columns:
        raise ValueError(
            f"write_webdataset: the table has no {KEY!r} column (found {list(df.columns)[:12]}); "
            "export needs a sample table from read_webdataset or read_parquet"
        )
    read_opts = storage_options if read_storage_options is None else read_storage_options
    parts = df.to_delayed()

    # Pass 1 (cheap): kept rows per partition, ledger counts, input fingerprint.
    surveys = dask.compute(*[dask.delayed(_survey)(p) for p in parts])
    n_ok = [s["n_ok"] for s in surveys]
    total = int(sum(n_ok))
    starts = np.concatenate([[0], np.cumsum(n_ok)]).astype(np.int64)
    fp = hashlib.sha256()
    for s in surveys:
        fp.update(np.ascontiguousarray(s["fp"], dtype="<u8").tobytes())
    config = {
        "format": "webdataset",
        "key_rule": KEY_RULE,
        "tar": {"format": "gnu", "mtime": TAR_MTIME, "mode": "0644"},
        "samples_per_shard": int(samples_per_shard),
        "members": list(members) if members else None,
        "write_index": bool(write_index),
        "write_parquet": bool(write_parquet),
        "ledger_columns": bool(ledger_columns),
        "input": {"rows_ok": total, "fingerprint": fp.hexdigest()[:16]},
    }
    committer = Committer(
        path,
        stage=STAGE,
        config=config,
        storage_options=storage_options,
        overwrite=overwrite,
        run_files=RUN_FILES,
        fsync=fsync,
        checksum=checksum,
    )
    n_shards = math.ceil(total / samples_per_shard)
    names = [f"{i:05d}" for i in range(n_shards)]
    todo = [i for i in range(n_shards) if not committer.done(names[i])]
    job = _ShardJob(
        committer=committer,
        per_shard=samples_per_shard,
        write_index=write_index,
        write_parquet=write_parquet,
        members=tuple(members) if members else None,
        read_storage_options=read_opts,
        on_error=on_error,
        ledger_columns=bool(ledger_columns),
    )

    # Pass 2: each output shard from the slices of the partitions that overlap it.
    wanted = frozenset(todo)
    piece_tasks: dict[int, Any] = {}
    shard_tasks = []
    token = dask.base.tokenize(committer.url, committer.config_hash, todo)
    for i in todo:
        lo, hi = i * samples_per_shard, min((i + 1) * samples_per_shard, total)
        # The partitions whose kept rows overlap [lo, hi), by bisection: a scan of every partition per
        # shard would make planning quadratic (1,000 shards × 1,000 partitions at 1M samples).
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, hi, side="left"))
        srcs = [p for p in range(max(first, 0), min(last, len(parts))) if n_ok[p] and starts[p] < hi and starts[p + 1] > lo]
        for p in srcs:
            if p not in piece_tasks:
                piece_tasks[p] = dask.delayed(_pieces, pure=True)(
                    parts[p], int(starts[p]), samples_per_shard, wanted, dask_key_name=f"nf-export-pieces-{p}-{token}"
                )
        shard_tasks.append(
            dask.delayed(_write_shard, pure=True)(
                job, i, [piece_tasks[p] for p in srcs], dask_key_name=f"nf-export-shard-{i:05d}-{token}"
            )
        )
    _run(shard_tasks, progress=progress, desc=f"export {committer.url}")

    # Shards were committed without a _done/ fsync each (durable_marker=False): one now, before the
    # run-level files that count them are published (see Committer.sync_markers for why this is safe).
    committer.sync_markers()

    # Run-level stats and errors from every shard's committed stats (this run's or an earlier one's).
    shard_stats = [json.loads(committer._cat(committer.path(f"{n}.stats.json"))) for n in names]
    input_counts = merge_counts([s["counts"] for s in surveys])
    export_errors = [e for s in shard_stats for e in s["errors"]]
    input_errors = [e for s in surveys for e in s["errors"]]
    by_status = dict(input_counts["by_status"])
    written = int(sum(s["samples"] for s in shard_stats))
    final = {
        "written": written,
        "filtered": int(by_status.get(Status.FILTERED.value, 0)),
        "error": int(by_status.get(Status.ERROR.value, 0)) + len(export_errors),
    }
    run_stats = {
        "config_hash": committer.config_hash,
        "samples_per_shard": samples_per_shard,
        "input": input_counts,
        "output": {
            "shards": n_shards,
            "samples": written,
            "tar_bytes": int(sum(s["tar_bytes"] for s in shard_stats)),
            "members_by_ext": dict(sorted(sum((Counter(s["members_by_ext"]) for s in shard_stats), Counter()).items())),
        },
        "export_errors_by_code": dict(sorted(Counter(error_code(e["nf_error"]) for e in export_errors).items())),
        "final": final,
    }
    committer.publish("_stats.json", (json.dumps(run_stats, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    committer.publish("_errors.parquet", _errors_parquet(input_errors + export_errors))
    return ExportResult(
        path=committer.url,
        shards=names,
        written=len(todo),
        skipped=n_shards - len(todo),
        samples=written,
        tar_bytes=run_stats["output"]["tar_bytes"],
        config_hash=committer.config_hash,
        stats=run_stats,
    )


def _errors_parquet(rows: list[dict[str, Any]]) -> bytes:
    table = pa.table(
        {
            KEY: pa.array([r["key"] for r in rows], pa.string()),
            SOURCE: pa.array([r["source"] for r in rows], pa.string()),
            ERROR: pa.array([r["nf_error"] for r in rows], pa.string()),
            "error_code": pa.array([error_code(r["nf_error"]) for r in rows], pa.string()),
            "stage": pa.array([r.get("stage") for r in rows], pa.string()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _run(tasks: list[Any], *, progress: bool, desc: str) -> list[Any]:
    """Compute shard tasks with a progress bar, on a distributed client if one is active."""
    from tqdm.auto import tqdm

    if not tasks:
        return []
    bar = tqdm(total=len(tasks), desc=desc, unit="shard", disable=not progress)
    try:
        client = None
        try:
            from distributed import get_client

            client = get_client()
        except (ImportError, ValueError):
            client = None
        if client is not None:
            from distributed import as_completed

            futures = client.compute(tasks)
            for _ in as_completed(futures):
                bar.update(1)
            return client.gather(futures)

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if str(key).startswith("nf-export-shard-"):
                bar.update(1)

        with dask.callbacks.Callback(posttask=posttask):
            return list(dask.compute(*tasks))
    finally:
        bar.close()


__all__ = ["ExportError", "ExportResult", "dali_index", "safe_key", "write_webdataset"]
