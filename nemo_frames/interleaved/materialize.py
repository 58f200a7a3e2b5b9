"""Fetching image bytes of item rows by their ``source_ref`` locators.

Rows are grouped by file; locators with ``byte_offset``/``byte_size`` are read as
coalesced byte ranges (one sequential read for a dense shard); a locator with a
``member`` but no offset is found by streaming the tar's headers; a locator with
only ``path`` reads the whole file. ``frame_index`` selects one frame of a
multi-frame TIFF (re-saved as a single-frame TIFF).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.interleaved import schema as IS
from nemo_frames.interleaved.reader import extract_frame
from nemo_frames.io.compressed import open_shard
from nemo_frames.io.fetch import read_ranges
from nemo_frames.io.tar import iter_members
from nemo_frames.ledger import ensure_ledger, mark_error
from nemo_frames.schema import ErrorCode, Status

Failure = tuple[ErrorCode, str]


def _members_by_name(path: str, names: set[str], storage_options: dict[str, Any] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with open_shard(path, storage_options=storage_options) as f:
        for m in iter_members(f, want=lambda n, s: n in names, max_read_size=1 << 30):
            if m.data is not None and m.name in names:
                out.setdefault(m.name, m.data)
    return out


def fetch_item_bytes(
    df: pd.DataFrame, rows: Any = None, *, storage_options: dict[str, Any] | None = None
) -> tuple[list[bytes | None], list[Failure | None]]:
    """Bytes of the selected image rows of a partition: ``binary_content`` when set, else fetched.

    Parameters
    ----------
    df : pandas.DataFrame
        An item table partition.
    rows : boolean mask, optional
        Which rows to fetch (default: ``ok`` image rows).

    Returns
    -------
    (data, failures)
        Row-aligned lists: bytes (None where not selected or failed), and ``(code, message)``
        for rows whose bytes could not be had.
    """
    n = len(df)
    if rows is None:
        rows = (df[IS.MODALITY] == "image") & (df[S.STATUS] == Status.OK.value if S.STATUS in df.columns else True)
    sel = pd.Series(rows, index=df.index).fillna(False).astype(bool).to_numpy()
    data: list[bytes | None] = [None] * n
    fails: list[Failure | None] = [None] * n
    have = df[IS.BINARY_CONTENT].tolist() if IS.BINARY_CONTENT in df.columns else [None] * n
    refs = df[IS.SOURCE_REF].tolist() if IS.SOURCE_REF in df.columns else [None] * n
    ranges: dict[str, list[tuple[int, int, int, int | None]]] = defaultdict(list)
    by_member: dict[str, list[tuple[int, str, int | None]]] = defaultdict(list)
    whole: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
    for i in range(n):
        if not sel[i]:
            continue
        b = have[i]
        if b is not None and b is not pd.NA:
            data[i] = bytes(b)
            continue
        ref = IS.parse_ref(refs[i])
        if ref is None:
            fails[i] = (ErrorCode.MISSING_MEMBER, f"no binary_content and no valid source_ref ({str(refs[i])[:80]!r})")
            continue
        fi = ref.get("frame_index")
        if "byte_offset" in ref and "byte_size" in ref:
            ranges[ref["path"]].append((i, int(ref["byte_offset"]), int(ref["byte_size"]), fi))
        elif "member" in ref:
            by_member[ref["path"]].append((i, ref["member"], fi))
        else:
            whole[ref["path"]].append((i, fi))
    got: list[tuple[int, bytes, int | None]] = []
    for path, items in ranges.items():
        try:
            blobs = read_ranges(path, [(o, s) for _, o, s, _ in items], storage_options=storage_options)
        except (OSError, ValueError) as exc:
            for i, *_ in items:
                fails[i] = (ErrorCode.FETCH_ERROR, f"{type(exc).__name__}: {exc}")
            continue
        got.extend((i, b, fi) for (i, _, _, fi), b in zip(items, blobs, strict=True))
    for path, mitems in by_member.items():
        try:
            found = _members_by_name(path, {m for _, m, _ in mitems}, storage_options)
        except Exception as exc:  # any tar/IO failure of this shard
            for i, *_ in mitems:
                fails[i] = (ErrorCode.FETCH_ERROR, f"{path}: {type(exc).__name__}: {exc}")
            continue
        for i, member, fi in mitems:
            if member in found:
                got.append((i, found[member], fi))
            else:
                fails[i] = (ErrorCode.MISSING_MEMBER, f"member {member!r} is not in {path}")
    for path, witems in whole.items():
        try:
            with fsspec.open(path, "rb", **(storage_options or {})) as f:
                blob = f.read()
        except OSError as exc:
            for i, _ in witems:
                fails[i] = (ErrorCode.FETCH_ERROR, f"{path}: {type(exc).__name__}: {exc}")
            continue
        got.extend((i, blob, fi) for i, fi in witems)
    for i, b, fi in got:
        if fi is None:
            data[i] = b
            continue
        try:
            data[i] = extract_frame(b, int(fi))
        except IndexError as exc:
            fails[i] = (ErrorCode.MISSING_MEMBER, f"{exc}")
        except Exception as exc:  # PIL raises many types for corrupt TIFFs
            fails[i] = (ErrorCode.DECODE_ERROR, f"frame {fi} cannot be read ({type(exc).__name__}: {exc})")
    return data, fails


def apply_failures(df: pd.DataFrame, fails: list[Failure | None]) -> pd.DataFrame:
    """Mark rows with a fetch failure as errors (``nf_error``) and record ``materialize_error``."""
    failed = pd.Series([f is not None for f in fails], index=df.index)
    if not failed.any():
        return df
    df = ensure_ledger(df)
    me = df[IS.MATERIALIZE_ERROR].astype(object).tolist()
    for i, f in enumerate(fails):
        if f is not None:
            me[i] = f[1]
    df = df.assign(**{IS.MATERIALIZE_ERROR: pd.Series(me, index=df.index, dtype=df[IS.MATERIALIZE_ERROR].dtype)})
    for code in {f[0] for f in fails if f is not None}:
        mask = pd.Series([f is not None and f[0] == code for f in fails], index=df.index)
        msgs = pd.Series([f[1] if f is not None else "" for f in fails], index=df.index)
        df = mark_error(df, mask, code, msgs)
    return df


def materialize(df: pd.DataFrame, *, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Fill ``binary_content`` of the ``ok`` image rows of a partition; failures become errors.

    Examples
    --------
    >>> items = read_interleaved_webdataset("mint/00000.tar")  # doctest: +SKIP
    >>> items = items.map_partitions(materialize, meta=items._meta)  # doctest: +SKIP
    """
    df = ensure_ledger(df)
    data, fails = fetch_item_bytes(df, storage_options=storage_options)
    old = df[IS.BINARY_CONTENT].tolist()
    new = [d if d is not None else (o if o is not None and o is not pd.NA else None) for d, o in zip(data, old, strict=True)]
    df = df.assign(**{IS.BINARY_CONTENT: pd.Series(pa.array(new, pa.large_binary()), index=df.index, dtype=pd.ArrowDtype(pa.large_binary()))})
    return apply_failures(df, fails)


__all__ = ["apply_failures", "fetch_item_bytes", "materialize"]
