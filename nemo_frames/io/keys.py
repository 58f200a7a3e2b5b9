"""Keys repeated across shards: found by a distributed count by key, then filtered, renamed or errored.

A WebDataset key names one sample, but nothing stops two shards from holding the same
key (two crawls written with the same counter, a shard copied twice). Within one shard the
scan marks repeats itself; across shards only a pass over the whole dataset can. This
module does that pass without bringing the keys to the driver:

1. every partition projects its ``ok`` rows to flat columns only: ``key``, the shard's
   index in the input order, the byte offset of the sample, and where the row sits
   (partition number, position), so no list column (embeddings) ever enters a shuffle;
2. the projection is shuffled by a hash of the key into one bucket per 16 partitions, and
   each bucket keeps only the keys it sees more than once, ranked by (shard, offset);
3. only those repeats (usually none) come back to the driver, and each input partition
   marks its own repeats from them.

The task graph is a constant number of tasks per partition (``tests/io/test_keys.py``
counts them), and the memory of any one task is one partition's flat projection.

The first occurrence, in shard order then offset, keeps its key; later ones are:

``filter``
    ``nf_status = filtered``, ``nf_reason = "duplicate_key: also in <first shard>"`` (default);
``rename``
    kept under a new key ``<key>_dup<n>`` (``n`` = 1 for the second occurrence, 2 for the
    third, ...); a new key that collides with an existing one is filtered as above;
``error``
    ``nf_status = error`` with ``ErrorCode.DUPLICATE_KEY``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from nemo_frames import schema as S
from nemo_frames.ledger import STRING, ensure_ledger, mark_error, mark_filtered
from nemo_frames.schema import ErrorCode, Status

DuplicateKeys = Literal["filter", "rename", "error"]
DUPLICATE_KEY_ACTIONS: tuple[str, ...] = ("filter", "rename", "error")

PARTS_PER_BUCKET = 16
_OCC_COLUMNS = {"key": STRING, "shard": "int64", "offset": "int64", "part": "int64", "row": "int64"}
_REPEAT_COLUMNS = {**_OCC_COLUMNS, "rank": "int64", "first_shard": "int64", "first_offset": "int64"}


def _empty(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in columns.items()})


def _occurrences(df: pd.DataFrame, shard_index: dict[str, int], partition_info: dict | None = None) -> pd.DataFrame:
    """The flat (key, shard, offset, part, row) projection of one partition's ``ok`` keyed rows."""
    part = int((partition_info or {}).get("number", 0))
    take = df[S.KEY].notna().to_numpy(dtype=bool, copy=True)
    if S.STATUS in df.columns:
        take &= (df[S.STATUS] == Status.OK.value).fillna(False).to_numpy(dtype=bool)
    rows = np.flatnonzero(take)
    sub = df.iloc[rows]
    shard = sub[S.SOURCE].map(shard_index) if S.SOURCE in sub.columns else pd.Series(np.nan, index=sub.index)
    # A source outside the given order sorts after every known shard, then by partition.
    shard = shard.astype("float64").fillna(len(shard_index) + part).to_numpy(dtype=np.int64)
    if S.IMAGE_OFFSET in sub.columns:
        offset = pd.Series(sub[S.IMAGE_OFFSET], dtype="Float64").fillna(-1).to_numpy(dtype=np.int64)
        offset = np.where(offset < 0, rows, offset)
    else:
        offset = rows
    return pd.DataFrame(
        {
            "key": pd.Series(sub[S.KEY].to_numpy(), dtype=STRING),
            "shard": shard.astype(np.int64),
            "offset": np.asarray(offset, dtype=np.int64),
            "part": np.full(len(rows), part, dtype=np.int64),
            "row": rows.astype(np.int64),
        }
    )


def _repeats_of(occ: pd.DataFrame) -> pd.DataFrame:
    """Within one hash partition: the later occurrences of each repeated key, ranked by (shard, offset)."""
    rep = occ[occ["key"].duplicated(keep=False)]
    if rep.empty:
        return _empty(_REPEAT_COLUMNS)
    rep = rep.sort_values(["key", "shard", "offset", "part", "row"], kind="stable")
    g = rep.groupby("key", sort=False)
    rep = rep.assign(
        rank=g.cumcount().astype("int64"),
        first_shard=g["shard"].transform("first").astype("int64"),
        first_offset=g["offset"].transform("first").astype("int64"),
    )
    return rep[rep["rank"] > 0].reset_index(drop=True).astype(_REPEAT_COLUMNS)


def shard_order(ddf: Any) -> list[str]:
    """The distinct ``source`` values of a frame, sorted: the shard order when none is given."""
    if S.SOURCE not in ddf.columns:
        return []
    src = ddf[S.SOURCE].dropna().unique()
    if hasattr(src, "compute"):
        src = src.compute()
    return sorted(str(s) for s in src)


def find_repeated_keys(ddf: Any, *, shards: Sequence[str] | None = None) -> Any:
    """The later occurrences of every key that appears more than once among the ``ok`` rows (lazy).

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        A sample table with ``key`` (and ``source``, ``image_offset``, ``nf_status`` when present).
    shards : sequence of str, optional
        The shard URLs in input order (the ``source`` values); the first occurrence of a key is
        the one in the earliest shard, then at the smallest offset. Default: ``source`` sorted.

    Returns
    -------
    dask.dataframe.DataFrame
        One row per later occurrence: ``key, shard, offset, part, row`` (where the row is:
        partition number and position in it), ``rank`` (1 for the second occurrence...),
        ``first_shard, first_offset``. Usually empty; it is the only thing worth computing.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> df = pd.DataFrame({"key": ["a", "b", "a"], "source": ["s0", "s0", "s1"], "image_offset": [512, 2048, 512]})
    >>> rep = find_repeated_keys(dd.from_pandas(df, npartitions=2, sort=False), shards=["s0", "s1"]).compute()
    >>> rep[["key", "shard", "rank", "first_shard"]].values.tolist()
    [['a', 1, 1, 0]]
    """
    import dask

    if shards is None:
        shards = shard_order(ddf)
    index = {s: i for i, s in enumerate(shards)}
    # One copy of the shard order in the graph, shared by every projection task.
    index_d = dask.delayed(index, pure=True)
    occ = ddf.map_partitions(_occurrences, index_d, meta=_empty(_OCC_COLUMNS), align_dataframes=False)
    # Splitting P inputs into P outputs makes P² pieces: 1M rows in 1000 partitions took 28× the driver
    # baseline that way. One output per PARTS_PER_BUCKET inputs keeps the pieces (and the task count)
    # linear; a bucket holds that many partitions' flat projections (tens of MB).
    buckets = max(1, math.ceil(ddf.npartitions / PARTS_PER_BUCKET))
    shuffled = occ.shuffle(on="key", npartitions=buckets, shuffle_method=_shuffle_method())
    return shuffled.map_partitions(_repeats_of, meta=_empty(_REPEAT_COLUMNS))


def _shuffle_method() -> str | None:
    """p2p on a distributed cluster (its default), else dask's staged task shuffle (not partd on disk)."""
    import dask

    if dask.config.get("dataframe.shuffle.method", None):
        return None  # the user's choice
    try:
        from distributed import default_client

        default_client()
        return None
    except (ImportError, ValueError):
        return "tasks"


def _mark_part(
    df: pd.DataFrame,
    by_part: dict[int, pd.DataFrame],
    action: str,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    rep = by_part.get(int((partition_info or {}).get("number", 0)))
    if rep is None or rep.empty:
        return df if action == "rename" else ensure_ledger(df)
    pos = rep["row"].to_numpy(dtype=np.int64)
    mask = np.zeros(len(df), dtype=bool)
    mask[pos] = True
    mask_s = pd.Series(mask, index=df.index)
    if action == "rename":
        keys = df[S.KEY].astype(object).to_numpy(copy=True)
        keys[pos] = rep["new_key"].to_numpy(dtype=object)
        return df.assign(**{S.KEY: pd.Series(keys, index=df.index, dtype=df[S.KEY].dtype)})
    text = pd.Series(pd.NA, index=df.index, dtype=object)
    text.iloc[pos] = rep["message"].to_numpy(dtype=object)
    if action == "error":
        return mark_error(df, mask_s, ErrorCode.DUPLICATE_KEY, text)
    return mark_filtered(df, ~mask_s, text.map(lambda m: f"{ErrorCode.DUPLICATE_KEY.value}: {m}" if isinstance(m, str) else m))


def _plan(rep: pd.DataFrame, shards: Sequence[str], action: str) -> pd.DataFrame:
    def name(i: int) -> str:
        return shards[i] if 0 <= i < len(shards) else f"<partition {i - len(shards)}>"

    rep = rep.sort_values(["shard", "offset", "part", "row"], kind="stable").reset_index(drop=True)
    source = [name(int(i)) for i in rep["shard"]]
    first = [name(int(i)) for i in rep["first_shard"]]
    rep = rep.assign(source=source, first_source=first, action=action)
    if action == "rename":
        rep["new_key"] = [f"{k}_dup{int(r)}" for k, r in zip(rep["key"], rep["rank"], strict=True)]
        rep["message"] = None
    else:
        rep["new_key"] = None
        rep["message"] = [
            f"also in {f}" if action == "filter" else f"key {k!r} also in {f} (its first occurrence, which is kept)"
            for k, f in zip(rep["key"], rep["first_source"], strict=True)
        ]
    return rep


def mark_repeated_keys(
    ddf: Any,
    *,
    action: DuplicateKeys = "filter",
    shards: Sequence[str] | None = None,
) -> tuple[Any, pd.DataFrame]:
    """Mark the later occurrences of keys repeated across the dataset: filter, rename or error.

    One distributed pass finds the repeats (:func:`find_repeated_keys`); when there are none
    the frame is returned as it is. Otherwise each partition marks its own repeats.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        A sample table (``key``, ``source``, ``image_offset``, ledger columns).
    action : {"filter", "rename", "error"}
        ``filter``: ``nf_status = filtered``, ``nf_reason = "duplicate_key: also in <shard>"``.
        ``rename``: the key becomes ``<key>_dup<n>`` (deterministic; a renamed key that collides
        with another key is then filtered). ``error``: ``nf_status = error``, code ``duplicate_key``.
    shards : sequence of str, optional
        Shard URLs in input order (see :func:`find_repeated_keys`).

    Returns
    -------
    (dask.dataframe.DataFrame, pandas.DataFrame)
        The marked frame (lazy), and the record of what was done: one row per later
        occurrence with ``key, source, offset, rank, first_source, action, new_key``.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> df = pd.DataFrame({"key": ["a", "b", "a"], "source": ["s0", "s0", "s1"], "image_offset": [512, 2048, 512],
    ...                    "nf_status": "ok"})
    >>> out, record = mark_repeated_keys(dd.from_pandas(df, npartitions=2, sort=False), shards=["s0", "s1"])
    >>> out.compute()[["key", "nf_status", "nf_reason"]].values.tolist()
    [['a', 'ok', <NA>], ['b', 'ok', <NA>], ['a', 'filtered', 'duplicate_key: also in s0']]
    >>> out, record = mark_repeated_keys(dd.from_pandas(df, npartitions=2, sort=False), action="rename")
    >>> out.compute()["key"].tolist(), record["new_key"].tolist()
    (['a', 'b', 'a_dup1'], ['a_dup1'])
    """
    import dask

    if action not in DUPLICATE_KEY_ACTIONS:
        raise ValueError(
            f"mark_repeated_keys: action={action!r}; expected one of {list(DUPLICATE_KEY_ACTIONS)} "
            "(input.duplicate_keys in a pipeline config)"
        )
    if shards is None:
        shards = shard_order(ddf)
    rep = find_repeated_keys(ddf, shards=shards).compute()
    record_cols = ["key", "source", "offset", "rank", "first_source", "action", "new_key"]
    if rep.empty:
        return ddf, pd.DataFrame({c: pd.Series([], dtype=object) for c in record_cols})
    plan = _plan(rep, shards, action)
    by_part = {int(p): g.reset_index(drop=True) for p, g in plan.groupby("part", sort=False)}
    meta = ddf._meta if action == "rename" else ensure_ledger(ddf._meta)
    marked = ddf.map_partitions(_mark_part, dask.delayed(by_part, pure=True), action, meta=meta, align_dataframes=False)
    record = plan[record_cols].copy()
    if action == "rename":
        # A new key may itself collide (a real key named "a_dup1"): filter those, so keys stay unique.
        marked, again = mark_repeated_keys(marked, action="filter", shards=shards)
        if len(again):
            record = pd.concat([record, again], ignore_index=True)
    return marked, record
