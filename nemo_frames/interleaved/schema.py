"""The item table: reserved columns, canonical Arrow types, ordering and validation.

One row per item of an interleaved document (MINT-1T / OBELICS shape), grouped by
``sample_id``. The reserved columns and their Arrow types are those of NeMo
Curator's interleaved Parquet (``sample_id`` string, ``position`` int32,
``modality`` string, ``content_type`` string, ``text_content`` string,
``binary_content`` large_binary, ``source_ref`` string, ``materialize_error``
string), so tables move between both tools. Every other column passes through
untouched.

Rows of a sample are ordered by ``position``: the metadata row at −1, then the
content rows 0…k−1 in document order; samples stay in input order (shard order, then
place in the shard) unless a reader or writer is asked to sort them by ``sample_id``. The ledger columns of the sample table
(``nf_status``, ``nf_error``, ``nf_reason``) mark item rows the same way; rows
that are not ``ok`` keep their last position and carry ``nf_input_position``
(where they were when read), and writers skip them (see ``docs/interleaved.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S

SAMPLE_ID: Final = S.SAMPLE_ID
POSITION: Final = S.POSITION
MODALITY: Final = S.MODALITY
CONTENT_TYPE: Final = S.CONTENT_TYPE
TEXT_CONTENT: Final = S.TEXT_CONTENT
BINARY_CONTENT: Final = S.BINARY_CONTENT
SOURCE_REF: Final = S.SOURCE_REF
MATERIALIZE_ERROR: Final = S.MATERIALIZE_ERROR
INPUT_POSITION: Final = "nf_input_position"
"""Position of the row as read, before any filter renumbered the sample (int32)."""

RESERVED: Final[dict[str, pa.DataType]] = dict(S.ITEM_ARROW_TYPES)
REQUIRED: Final = S.ITEM_REQUIRED
MODALITIES: Final = S.MODALITIES
METADATA_POSITION: Final = -1
UNPLACED_POSITION: Final = -2
"""Position of error rows that have no place in a document (unreferenced members, shard-level errors)."""

LEDGER_TYPES: Final[dict[str, pa.DataType]] = {
    S.STATUS: pa.string(),
    S.ERROR: pa.string(),
    S.REASON: pa.string(),
    INPUT_POSITION: pa.int32(),
}


class ItemSchemaError(TypeError):
    """A reserved column of an item table has a type that cannot be cast to its canonical type."""


def pandas_dtype(t: pa.DataType) -> Any:
    """The pandas dtype used for an Arrow type in item tables.

    ``position`` is a nullable ``Int32`` so that error rows and padding never turn it into floats.
    """
    if pa.types.is_signed_integer(t):
        return {8: "Int8", 16: "Int16", 32: "Int32", 64: "Int64"}[t.bit_width]
    return S.arrow_dtype(t)


def empty_items(extra: Mapping[str, Any] | None = None, *, ledger: bool = True) -> pd.DataFrame:
    """An empty item table: reserved columns (+ ledger columns) + ``extra`` columns with the given dtypes.

    Examples
    --------
    >>> list(empty_items({"url": "string"}).columns)[:3]
    ['sample_id', 'position', 'modality']
    """
    cols: dict[str, Any] = {c: pandas_dtype(t) for c, t in RESERVED.items()}
    for c, t in (extra or {}).items():
        if c not in cols:
            cols[c] = t
    if ledger:
        for c, t in LEDGER_TYPES.items():
            cols.setdefault(c, pandas_dtype(t))
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in cols.items()})


def _cast_series(s: pd.Series, name: str, target: pa.DataType, where: str) -> pd.Series:
    want = pandas_dtype(target)
    found = s.dtype
    # Never downcast large types: a large_string / large_binary column stays large.
    if isinstance(found, pd.ArrowDtype):
        ft = found.pyarrow_dtype
        if (pa.types.is_large_string(ft) and pa.types.is_string(target)) or (
            pa.types.is_large_binary(ft) and pa.types.is_binary(target)
        ):
            return s
        if pa.types.is_large_binary(target) and (pa.types.is_binary(ft) or pa.types.is_large_binary(ft)):
            return s if ft == target else pd.Series(pa.array(s).cast(target), index=s.index, dtype=want, name=s.name)
    if str(found) == str(want):
        return s
    try:
        if pa.types.is_large_binary(target):
            arr = pa.array(s.astype(object).where(s.notna(), None).tolist(), type=pa.large_binary())
            return pd.Series(arr, index=s.index, dtype=want, name=s.name)
        if pa.types.is_string(target):
            if not (pd.api.types.is_object_dtype(found) or pd.api.types.is_string_dtype(found)):
                raise TypeError("not a string column")
            bad = s.notna() & ~s.map(lambda v: isinstance(v, str), na_action="ignore").fillna(True).astype(bool)
            if pd.api.types.is_object_dtype(found) and bad.any():
                raise TypeError(f"{int(bad.sum())} values are not strings (first: {s[bad].iloc[0]!r})")
            return s.astype(want)
        if pa.types.is_integer(target):
            if pd.api.types.is_float_dtype(found):
                frac = s.notna() & (s.fillna(0) % 1 != 0)
                if frac.any():
                    raise TypeError(f"non-integer values (first: {s[frac].iloc[0]!r})")
            out = s.astype(want)
            info = np.iinfo(target.to_pandas_dtype())
            if out.notna().any() and (out.min() < info.min or out.max() > info.max):
                raise TypeError(f"values outside the {target} range")
            return out
        return s.astype(want)
    except (TypeError, ValueError, pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise ItemSchemaError(
            f"{where}: column {name!r}: expected {target} (pandas {want}), found {found} that cannot be cast ({exc}); "
            f"convert the column first, or rename it if it is not the item table's {name!r}"
        ) from None


def canonicalize(df: pd.DataFrame, *, where: str = "canonicalize") -> pd.DataFrame:
    """Cast the reserved (and ledger) columns of a pandas item table to their canonical types.

    Missing nullable reserved columns are added as typed nulls; passthrough columns are
    left exactly as they are; ``large_string`` / ``large_binary`` columns are never
    downcast. Raises :class:`ItemSchemaError` naming the column, the expected and the
    found type when a column cannot be cast, and ``ValueError`` when a required column
    (``sample_id``, ``position``, ``modality``) is missing.

    Examples
    --------
    >>> import pandas as pd
    >>> df = canonicalize(pd.DataFrame({"sample_id": ["a"], "position": [0], "modality": ["text"], "text_content": ["hi"]}))
    >>> str(df.position.dtype), str(df.binary_content.dtype)
    ('Int32', 'large_binary[pyarrow]')
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: the item table has no {missing} column(s) (found {list(df.columns)[:12]}); an item table needs "
            "sample_id, position and modality — build one with read_interleaved_webdataset/parquet or samples_to_items"
        )
    out = {}
    for c in df.columns:
        t = RESERVED.get(c) or LEDGER_TYPES.get(c)
        out[c] = _cast_series(df[c], c, t, where) if t is not None else df[c]
    res = pd.DataFrame(out, index=df.index)
    for c, t in RESERVED.items():
        if c not in res.columns:
            res[c] = null_series(t, res.index)
    order = [c for c in RESERVED] + [c for c in res.columns if c not in RESERVED]
    return res[order]


def null_series(t: pa.DataType, index: pd.Index) -> pd.Series:
    """A column of nulls of Arrow type ``t`` in the item table's pandas dtype."""
    dtype = pandas_dtype(t)
    if isinstance(dtype, pd.ArrowDtype):
        return pd.Series(pa.nulls(len(index), t), index=index, dtype=dtype)
    return pd.Series(pd.NA, index=index, dtype=dtype)


def arrow_schema_overrides() -> dict[str, pa.DataType]:
    """Canonical Arrow types of the reserved and ledger columns, for Parquet writers."""
    return {**RESERVED, **LEDGER_TYPES}


def sort_items(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by (sample_id, position); rows that are not ``ok`` after the ``ok`` rows at equal keys.

    Stable, so equal keys keep their input order; the index is reset.
    """
    if len(df) == 0:
        return df.reset_index(drop=True)
    key = pd.DataFrame(
        {
            "s": df[SAMPLE_ID].astype(object).where(df[SAMPLE_ID].notna(), "\U0010ffff"),
            "p": df[POSITION].astype("float64").fillna(np.inf),
            "k": (df[S.STATUS] != "ok").astype(int) if S.STATUS in df.columns else 0,
        }
    )
    order = np.lexsort((key["k"].to_numpy(), key["p"].to_numpy(), key["s"].to_numpy().astype(str)))
    return df.iloc[order].reset_index(drop=True)


def order_items(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in input order: samples in the order they first appear, each sample's rows by ``position``.

    The order readers and writers keep by default (shard order, then place in the shard), so a
    round trip returns documents where they were. Within a sample the metadata row (−1) comes
    first, then content rows 0…k−1; rows that are not ``ok`` come after ``ok`` rows at equal
    positions; rows without a ``sample_id`` go last, in their input order. Stable; the index is reset.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"sample_id": ["b", "a", "b", "a"], "position": [0, 0, -1, -1],
    ...     "modality": ["text", "text", "metadata", "metadata"]})
    >>> order_items(df)[["sample_id", "position"]].values.tolist()
    [['b', -1], ['b', 0], ['a', -1], ['a', 0]]
    """
    if len(df) == 0:
        return df.reset_index(drop=True)
    sid = df[SAMPLE_ID].to_numpy(dtype=object, na_value=None)
    codes, _ = pd.factorize(pd.Series(sid, dtype=object), use_na_sentinel=True)
    codes = np.where(codes < 0, np.iinfo(np.int64).max, codes)
    pos = df[POSITION].astype("float64").fillna(np.inf).to_numpy()
    bad = (df[S.STATUS] != "ok").to_numpy(dtype=int, na_value=1) if S.STATUS in df.columns else np.zeros(len(df), int)
    # Null-id rows (unplaced errors) keep their input order among themselves, whatever their position.
    pos = np.where(codes == np.iinfo(np.int64).max, 0.0, pos)
    order = np.lexsort((np.arange(len(df)), bad, pos, codes))
    return df.iloc[order].reset_index(drop=True)


def arrange_items(df: pd.DataFrame, *, sort: bool = False) -> pd.DataFrame:
    """:func:`sort_items` when ``sort`` is true, else :func:`order_items` (input order)."""
    return sort_items(df) if sort else order_items(df)


def validate(df: pd.DataFrame) -> list[str]:
    """Problems of a pandas item table (empty list: fine), over its ``ok`` rows.

    Checks: required columns non-null, modality in text/image/metadata, one metadata row
    at −1 per sample, content positions unique and ≥ 0.
    """
    problems = []
    ok = df if S.STATUS not in df.columns else df[df[S.STATUS] == "ok"]
    for c in REQUIRED:
        if c not in df.columns:
            problems.append(f"missing column {c!r}")
        elif ok[c].isna().any():
            problems.append(f"{int(ok[c].isna().sum())} ok rows have a null {c!r}")
    if problems:
        return problems
    bad_mod = ~ok[MODALITY].isin(MODALITIES)
    if bad_mod.any():
        problems.append(f"unknown modality {sorted(set(ok.loc[bad_mod, MODALITY]))}")
    meta = ok[MODALITY] == "metadata"
    if (ok.loc[meta, POSITION] != METADATA_POSITION).any():
        problems.append("metadata rows must be at position -1")
    if (ok.loc[~meta, POSITION] < 0).any():
        problems.append("content rows must be at position >= 0")
    if ok.loc[meta, SAMPLE_ID].duplicated().any():
        problems.append("more than one metadata row in a sample")
    if ok.loc[~meta, [SAMPLE_ID, POSITION]].duplicated().any():
        problems.append("two content rows of a sample share a position")
    return problems


# --------------------------------------------------------------------------- source_ref
def make_ref(
    path: str, member: str | None = None, byte_offset: int | None = None, byte_size: int | None = None,
    frame_index: int | None = None,
) -> str:
    """A ``source_ref`` locator (JSON text with NeMo Curator's keys).

    Examples
    --------
    >>> make_ref("/d/0.tar", "a.tiff", 512, 100, frame_index=2)
    '{"path": "/d/0.tar", "member": "a.tiff", "byte_offset": 512, "byte_size": 100, "frame_index": 2}'
    """
    ref: dict[str, Any] = {"path": path}
    if member is not None:
        ref["member"] = member
    if byte_offset is not None:
        ref["byte_offset"] = int(byte_offset)
        ref["byte_size"] = int(byte_size or 0)
    if frame_index is not None:
        ref["frame_index"] = int(frame_index)
    return json.dumps(ref, ensure_ascii=False)


def parse_ref(ref: Any) -> dict[str, Any] | None:
    """The dict of a ``source_ref`` (None for a missing or invalid one)."""
    if ref is None or (not isinstance(ref, str) and pd.isna(ref)):
        return None
    try:
        out = json.loads(ref)
    except ValueError:
        return None
    return out if isinstance(out, dict) and "path" in out else None


__all__ = [
    "BINARY_CONTENT",
    "CONTENT_TYPE",
    "INPUT_POSITION",
    "MATERIALIZE_ERROR",
    "METADATA_POSITION",
    "MODALITY",
    "POSITION",
    "RESERVED",
    "SAMPLE_ID",
    "SOURCE_REF",
    "TEXT_CONTENT",
    "UNPLACED_POSITION",
    "ItemSchemaError",
    "arrange_items",
    "canonicalize",
    "empty_items",
    "make_ref",
    "order_items",
    "parse_ref",
    "sort_items",
    "validate",
]
