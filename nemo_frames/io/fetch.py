"""Byte access by locator: read members of shards as coalesced byte ranges.

A persisted table holds locators, not bytes (DESIGN §2). When a pass needs the
bytes, rows are grouped by shard and their ranges merged when the gap between
them is small, so a dense shard is read in one sequential pass, and a sparse
selection reads only what it needs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.io.urls import open_shard
from nemo_frames.ledger import mark_error
from nemo_frames.schema import ErrorCode, Status

DEFAULT_MAX_GAP = 1 << 20  # bytes; reading a gap this small costs less than another request
DEFAULT_MAX_SPAN = 256 << 20  # bound memory per merged read


def coalesce(
    ranges: Sequence[tuple[int, int]], *, max_gap: int = DEFAULT_MAX_GAP, max_span: int = DEFAULT_MAX_SPAN
) -> list[tuple[int, int, list[int]]]:
    """Merge ``(offset, size)`` ranges into spans ``(start, end, [indices of ranges])``.

    Examples
    --------
    >>> coalesce([(0, 10), (20, 5), (5000000, 1)], max_gap=100)
    [(0, 25, [0, 1]), (5000000, 5000001, [2])]
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    spans: list[tuple[int, int, list[int]]] = []
    for i in order:
        off, size = ranges[i]
        end = off + size
        if spans and off - spans[-1][1] <= max_gap and end - spans[-1][0] <= max_span:
            start, cur_end, idx = spans[-1]
            spans[-1] = (start, max(cur_end, end), [*idx, i])
        else:
            spans.append((off, end, [i]))
    return spans


def read_ranges(
    url: str,
    ranges: Sequence[tuple[int, int]],
    *,
    storage_options: dict[str, Any] | None = None,
    max_gap: int = DEFAULT_MAX_GAP,
    views: bool = False,
) -> list[bytes] | list[memoryview]:
    """Read ``(offset, size)`` ranges of one file (local or any fsspec URL), coalesced.

    With ``views=True`` each range is a read-only ``memoryview`` into the buffer of its
    coalesced read instead of a copy: a writer that hands the ranges on (export) saves
    a copy of every byte. The views keep their whole buffer alive.

    Raises
    ------
    OSError
        When the file cannot be opened or is shorter than a range (the message names both).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "f.bin"); _ = open(p, "wb").write(b"0123456789")
    >>> read_ranges(p, [(2, 3), (8, 2)])
    [b'234', b'89']
    """
    out: list[bytes | None] = [None] * len(ranges)
    if not ranges:
        return []
    from nemo_frames.io.compressed import is_compressed, read_ranges_compressed

    if is_compressed(url):  # offsets are in the decompressed tar: one sequential pass, no seeks
        return read_ranges_compressed(url, ranges, storage_options=storage_options, views=views)
    with open_shard(url, storage_options) as f:
        for start, end, idx in coalesce(ranges, max_gap=max_gap):
            f.seek(start)
            buf = f.read(end - start)
            if len(buf) < end - start:
                raise OSError(
                    f"{url}: expected {end - start} bytes at offset {start}, found {len(buf)}; "
                    "the shard changed or was truncated after the scan — scan it again"
                )
            src = memoryview(buf) if views else buf
            for i in idx:
                off, size = ranges[i]
                out[i] = src[off - start : off - start + size]
    return out  # type: ignore[return-value]


def fetch_members(
    df: pd.DataFrame,
    *,
    exts: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    views: bool = False,
) -> tuple[list[dict[str, bytes] | None], list[str | None]]:
    """Fetch the member bytes of each row, grouped by shard.

    Parameters
    ----------
    df : pandas.DataFrame
        Rows with ``source`` and ``nf_members`` (as made by :func:`read_webdataset`).
    exts : sequence of str, optional
        Only these extensions (default: every member of the sample).
    views : bool
        Give each member as a read-only ``memoryview`` into its shard's read buffer
        instead of ``bytes`` (no per-member copy; see :func:`read_ranges`).

    Returns
    -------
    (members, errors)
        Row-aligned lists: ``{extension: bytes}`` or None, and an error message or None.
    """
    return fetch_member_lists(
        df[S.SOURCE].tolist(), df[S.MEMBERS].tolist(), exts=exts, storage_options=storage_options, views=views
    )


def fetch_member_lists(
    sources: Sequence[Any],
    locators: Sequence[Any],
    *,
    exts: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    views: bool = False,
) -> tuple[list[dict[str, bytes] | None], list[str | None]]:
    """:func:`fetch_members` on plain lists: row-aligned shard URLs and ``nf_members`` JSON texts.

    For callers that already hold the columns as lists (export), so no frame is built for the call.
    Each returned dict lists its members in ``nf_members`` order.
    """
    n = len(sources)
    members: list[dict[str, bytes] | None] = [None] * n
    errors: list[str | None] = [None] * n
    by_source: dict[str, list[tuple[int, str, int, int]]] = defaultdict(list)
    for i, (src, loc) in enumerate(zip(sources, locators, strict=True)):
        if loc is None or loc is pd.NA or src is None or src is pd.NA:
            errors[i] = "row has no member locators (errored at scan?)"
            continue
        try:
            table = json.loads(loc)
        except ValueError:
            errors[i] = f"nf_members is not valid JSON: {str(loc)[:80]!r}"
            continue
        members[i] = {}
        items = by_source[src]
        for ext, (off, size) in table.items():
            if exts is None or ext in exts or ext.lower() in exts:  # "JPG" is asked for as "jpg"
                items.append((i, ext, int(off), int(size)))
    for src, items in by_source.items():
        if not items:
            continue
        try:
            data = read_ranges(src, [(o, s) for _, _, o, s in items], storage_options=storage_options, views=views)
        except (OSError, ValueError) as exc:
            for i, *_ in items:
                members[i] = None
                errors[i] = f"{type(exc).__name__}: {exc}"
            continue
        for (i, ext, _, _), b in zip(items, data, strict=True):
            m = members[i]
            if m is not None:
                m[ext] = b
    return members, errors


def fetch_image_bytes(df: pd.DataFrame, *, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Add an ``image_bytes`` column for the ``ok`` rows of a partition; failures become ``fetch_error``.

    Rows with another status get a null ``image_bytes``.
    """
    out = [None] * len(df)
    errs: list[str | None] = [None] * len(df)
    ok = (df[S.STATUS] == Status.OK.value).to_numpy()
    by_source: dict[str, list[int]] = defaultdict(list)
    src = df[S.SOURCE].tolist()
    for i in range(len(df)):
        if ok[i]:
            by_source[src[i]].append(i)
    offs = df[S.IMAGE_OFFSET].tolist()
    sizes = df[S.IMAGE_SIZE].tolist()
    for s, idx in by_source.items():
        try:
            data = read_ranges(s, [(int(offs[i]), int(sizes[i])) for i in idx], storage_options=storage_options)
        except (OSError, ValueError, TypeError) as exc:
            for i in idx:
                errs[i] = f"{type(exc).__name__}: {exc}"
            continue
        for i, b in zip(idx, data, strict=True):
            out[i] = b
    res = df.assign(**{S.IMAGE_BYTES: pd.Series(pa.array(out, pa.binary()), dtype=pd.ArrowDtype(pa.binary()), index=df.index)})
    failed = pd.Series([e is not None for e in errs], index=df.index)
    if failed.any():
        res = mark_error(res, failed, ErrorCode.FETCH_ERROR, pd.Series(errs, index=df.index))
    return res
