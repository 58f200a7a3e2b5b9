"""Exact dedup: samples with the same ``content_hash`` form one group."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from nemo_frames.dedup._table import (
    collect,
    empty_dup_table,
    finish_dup_table,
    group_min_key,
    group_survivors,
    rank_order,
)
from nemo_frames.schema import CONTENT_HASH, KEY, STATUS, Status


def _ranks(keys: np.ndarray, policy: str, score: np.ndarray | None) -> np.ndarray:
    order = rank_order(keys, policy=policy, score=score)  # type: ignore[arg-type]
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    return rank


def best_other(labels: np.ndarray, rank: np.ndarray, survivor: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per row: the survivor's key; for the survivor itself, the next-best member's key."""
    order = np.lexsort((rank, labels))
    lab = labels[order]
    start = np.r_[True, lab[1:] != lab[:-1]]
    first_pos = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
    first_key = keys[order][first_pos]
    second_key = keys[order][np.minimum(first_pos + 1, len(order) - 1)]
    out = np.empty(len(keys), dtype=object)
    out[order] = np.where(survivor[order], second_key, first_key)
    return out


def exact_duplicates(
    df: Any,
    *,
    policy: Literal["smallest_key", "max_score"] = "smallest_key",
    score_column: str | None = None,
    hash_column: str = CONTENT_HASH,
) -> pd.DataFrame:
    """Groups of samples whose raw image bytes hash to the same value.

    Only rows with ``nf_status == 'ok'`` (or all rows, without a ledger) and a non-null hash
    take part. One survivor per group: the smallest key, or the highest ``score_column``.

    Parameters
    ----------
    df : pandas or Dask DataFrame
        With ``key`` and ``hash_column`` (and ``score_column`` for ``policy='max_score'``).
    policy : {"smallest_key", "max_score"}
        Which member of a group is kept.
    score_column : str, optional
        Numeric column for ``policy='max_score'``.
    hash_column : str
        Column holding the content hash (default ``content_hash``).

    Returns
    -------
    DataFrame
        The duplicates table (see :mod:`nemo_frames.dedup`): ``max_similarity`` is 1.0 and
        ``matched_key`` is the group's survivor (for the survivor: the next-ranked member).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"key": ["a", "b", "c"], "content_hash": ["h1", "h2", "h1"]})
    >>> t = exact_duplicates(df)
    >>> t[["key", "group_id", "is_survivor", "matched_key"]].values.tolist()
    [['a', 'a', True, 'c'], ['c', 'a', False, 'a']]
    """
    cols = [KEY, hash_column] + ([score_column] if score_column else [])
    if policy == "max_score" and not score_column:
        raise ValueError("exact_duplicates: policy='max_score' needs score_column=<a numeric column>")
    if hasattr(df, "map_partitions") and df.npartitions > 1:
        return _exact_distributed(df, cols, policy=policy, score_column=score_column, hash_column=hash_column)
    pdf = collect(df, cols, stage="exact_duplicates")
    n_rows = len(pdf)
    pdf = pdf[pdf[hash_column].notna()]
    size = pdf.groupby(hash_column, sort=False)[KEY].transform("size")
    g = pdf[(size > 1).to_numpy()]
    if g.empty:
        out = empty_dup_table()
        out.attrs.update({"n_rows": n_rows, "method": "exact"})
        return out
    labels = pd.factorize(g[hash_column])[0]
    keys = g[KEY].to_numpy(dtype=object)
    score = g[score_column].to_numpy(dtype=np.float64) if policy == "max_score" else None
    rank = _ranks(keys, policy, score)
    surv = group_survivors(labels, rank)
    table = pd.DataFrame(
        {
            "key": keys,
            "group_id": group_min_key(labels, keys),
            "is_survivor": surv,
            "max_similarity": 1.0,
            "matched_key": best_other(labels, rank, surv, keys),
            "method": "exact",
        }
    )
    return finish_dup_table(table, n_rows=n_rows, method="exact")


def _exact_distributed(
    df: Any, cols: list[str], *, policy: Literal["smallest_key", "max_score"], score_column: str | None, hash_column: str
) -> pd.DataFrame:
    """Exact dedup of a Dask frame without bringing every hash to the driver.

    The narrow ``ok`` rows are shuffled by hash, so every group lands in one partition, each
    partition finds its own groups, and only the rows of groups of two or more come back. The
    driver then holds the duplicates, not the dataset: its memory follows the duplicate count.
    """
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(
            f"exact_duplicates: input is missing column(s) {missing}; found {list(df.columns)}. "
            "Compute them in the scoring pass first (or rename your columns to these names)."
        )
    sub = df[[*cols, STATUS]] if STATUS in df.columns else df[cols]
    if STATUS in sub.columns:
        sub = sub[sub[STATUS] == Status.OK.value][cols]
    n_rows = sub[KEY].isna().map_partitions(len).sum()
    n_null_keys = sub[KEY].isna().sum()
    sub = sub[~sub[hash_column].isna()]
    # About 8 input partitions per output: the narrow rows are small, and fewer outputs mean fewer tasks.
    shuffled = sub.shuffle(on=hash_column, npartitions=max(1, df.npartitions // 8))
    meta = empty_dup_table()
    groups = shuffled.map_partitions(_exact_partition, policy=policy, score_column=score_column,
                                     hash_column=hash_column, meta=meta)
    import dask

    table, n, n_null = dask.compute(groups, n_rows, n_null_keys)
    if n_null:
        raise ValueError(f"exact_duplicates: column 'key' has {int(n_null)} missing values; every sample needs a key")
    if not len(table):
        out = empty_dup_table()
        out.attrs.update({"n_rows": int(n), "method": "exact"})
        return out
    return finish_dup_table(table, n_rows=int(n), method="exact")


def _exact_partition(part: pd.DataFrame, *, policy: Any, score_column: str | None, hash_column: str) -> pd.DataFrame:
    t = exact_duplicates(part.reset_index(drop=True), policy=policy, score_column=score_column, hash_column=hash_column)
    t.attrs.clear()
    return t[list(empty_dup_table().columns)]
