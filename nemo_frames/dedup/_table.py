"""The explainable duplicates table shared by every dedup method, and what is built on it.

One row per sample that belongs to a duplicate group of two or more; unique samples are not
listed. Columns:

``key``            the sample's key
``group_id``       the smallest key in the group (stable across partitionings and reruns)
``is_survivor``    whether this row is kept
``max_similarity`` exact: 1.0; perceptual: 1 − hamming/64 to ``matched_key``; semantic: the cosine
                   to ``matched_key`` (see each method for which neighbour that is)
``matched_key``    the neighbour that explains the row (the reason it is a duplicate)
``method``         ``exact`` / ``perceptual`` / ``semantic``
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from nemo_frames import ledger
from nemo_frames.schema import KEY, STATUS, Status

Method = Literal["exact", "perceptual", "semantic"]
Policy = Literal["max_score", "nearest_centroid", "farthest_centroid", "smallest_key"]
STRING = pd.StringDtype("pyarrow")
DUP_COLUMNS = ("key", "group_id", "is_survivor", "max_similarity", "matched_key", "method")
DUP_DTYPES: dict[str, Any] = {
    "key": STRING,
    "group_id": STRING,
    "is_survivor": "bool",
    "max_similarity": "float64",
    "matched_key": STRING,
    "method": STRING,
}


def empty_dup_table(extra: dict[str, Any] | None = None) -> pd.DataFrame:
    """An empty duplicates table with the right dtypes."""
    cols = {c: pd.Series([], dtype=t) for c, t in {**DUP_DTYPES, **(extra or {})}.items()}
    return pd.DataFrame(cols)


def finish_dup_table(df: pd.DataFrame, *, n_rows: int, method: Method, **attrs: Any) -> pd.DataFrame:
    """Cast to the table dtypes, sort by (group_id, key) and record ``n_rows`` in ``attrs``."""
    out = df.copy()
    out["method"] = method
    for c, t in DUP_DTYPES.items():
        out[c] = out[c].astype(t)
    rest = [c for c in out.columns if c not in DUP_COLUMNS]
    out = out[list(DUP_COLUMNS) + rest].sort_values(["group_id", "key"], kind="stable").reset_index(drop=True)
    out.attrs.update({"n_rows": int(n_rows), "method": method, **attrs})
    return out


def collect(df: Any, columns: Sequence[str], *, stage: str) -> pd.DataFrame:
    """The ``ok`` rows of ``df`` (pandas or Dask) projected to ``columns``, as one pandas frame.

    Used by the dedup methods whose inputs are narrow (hashes and keys), which fit on one
    machine even at 100M rows.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(
            f"{stage}: input is missing column(s) {missing}; found {list(df.columns)}. "
            "Compute them in the scoring pass first (or rename your columns to these names)."
        )
    cols = list(columns) + ([STATUS] if STATUS in df.columns and STATUS not in columns else [])
    sub = df[cols]
    if STATUS in sub.columns:
        sub = sub[sub[STATUS] == Status.OK.value]
    if hasattr(sub, "compute"):
        sub = sub.compute()
    sub = sub[list(columns)].reset_index(drop=True)
    if hasattr(sub, "to_pandas"):  # cuDF: the narrow columns are cheap to bring to host
        sub = sub.to_pandas()
    if sub[KEY].isna().any():
        raise ValueError(f"{stage}: column 'key' has {int(sub[KEY].isna().sum())} missing values; every sample needs a key")
    if sub[KEY].duplicated().any():
        raise_not_unique(stage, sub.loc[sub[KEY].duplicated(), KEY].iloc[0])
    return sub


def raise_not_unique(stage: str, example: Any) -> None:
    """Raise the error every dedup method gives for a key that two ``ok`` rows share."""
    raise ValueError(
        f"{stage}: column 'key' is not unique (e.g. {example!r}); mark repeated keys with ErrorCode.DUPLICATE_KEY "
        "before dedup so each sample has one key: nemo_frames.io.keys.mark_repeated_keys(df) (curate does it "
        "itself: input.duplicate_keys)"
    )


def check_unique_keys(df: Any, *, stage: str) -> None:
    """Raise :func:`raise_not_unique` when two ``ok`` rows of ``df`` (pandas or Dask) share a key.

    A Dask frame is checked by a distributed count by key (only repeats reach the driver).
    """
    if hasattr(df, "compute"):
        from nemo_frames.io.keys import find_repeated_keys

        rep = find_repeated_keys(df, shards=[]).head(1, npartitions=-1)
        if len(rep):
            raise_not_unique(stage, rep["key"].iloc[0])
        return
    keys = df[KEY]
    if STATUS in df.columns:
        keys = keys[df[STATUS] == Status.OK.value]
    dup = keys[keys.notna() & keys.duplicated()]
    if len(dup):
        raise_not_unique(stage, dup.iloc[0])


def rank_value(
    n: int,
    *,
    policy: Policy,
    score: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """The policy's sort value per row (float64, lower = better); ties are broken by key.

    ``max_score``: ``-score`` (missing scores ``+inf``, last). ``nearest_centroid`` /
    ``farthest_centroid``: ``distance`` / ``-distance`` (cosine distance to the centroid).
    ``smallest_key``: zeros (the key decides).
    """
    if policy == "smallest_key":
        return np.zeros(n, np.float64)
    if policy == "max_score":
        if score is None:
            raise ValueError("policy='max_score' needs score_column=<a numeric column>, e.g. 'aesthetic_score'")
        s = np.asarray(score, dtype=np.float64)
        return np.where(np.isnan(s), np.inf, -s)
    if policy in ("nearest_centroid", "farthest_centroid"):
        if distance is None:
            raise ValueError(f"policy={policy!r} needs distances to the centroid")
        d = np.asarray(distance, dtype=np.float64)
        return d if policy == "nearest_centroid" else -d
    raise ValueError(
        f"policy={policy!r} is not one of 'max_score', 'nearest_centroid', 'farthest_centroid', 'smallest_key'"
    )


def rank_order(
    keys: np.ndarray,
    *,
    policy: Policy,
    score: np.ndarray | None = None,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """Positions of the rows sorted best-first under ``policy``; ties go to the smallest key.

    ``max_score``: highest ``score`` first (missing scores last). ``nearest_centroid`` /
    ``farthest_centroid``: by cosine ``distance`` to the centroid. ``smallest_key``: by key.
    """
    kr = key_rank(keys)
    if policy == "smallest_key":
        return np.argsort(kr, kind="stable")
    primary = rank_value(len(kr), policy=policy, score=score, distance=distance)
    return np.lexsort((kr, primary))


def group_survivors(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Boolean mask: the best-ranked member of each label (``rank``: 0 = best)."""
    order = np.lexsort((rank, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    out = np.zeros(len(labels), dtype=bool)
    out[order[first]] = True
    return out


def key_order(keys: np.ndarray) -> np.ndarray:
    """Positions of ``keys`` in ascending order (stable), by Arrow's string sort where it applies.

    UTF-8 byte order is code point order, so this equals Python's ``sorted`` for strings, at C
    speed (an object-array sort or a pandas groupby-min on strings runs Python comparisons)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = np.asarray(keys, dtype=object)
    try:
        arr = pa.array(keys, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return np.argsort(keys, kind="stable")
    return pc.sort_indices(arr).to_numpy()


def key_rank(keys: np.ndarray) -> np.ndarray:
    """Each key's position in ascending key order (0 = smallest; equal keys by position)."""
    order = key_order(keys)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def group_min_key(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For every row, the smallest key among rows with the same label."""
    keys = np.asarray(keys, dtype=object)
    if not len(keys):
        return keys.copy()
    order = key_order(keys)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    lab = lab.ravel()
    best = np.full(int(lab.max()) + 1, len(keys), np.int64)
    np.minimum.at(best, lab, rank)
    return keys[order[best[lab]]]


def summary(dup_tables: pd.DataFrame | Iterable[pd.DataFrame], *, n_rows: int | None = None) -> pd.DataFrame:
    """Kept / removed counts per dedup method.

    Parameters
    ----------
    dup_tables : DataFrame or iterable of DataFrames
        Tables returned by the dedup functions.
    n_rows : int, optional
        Rows considered; by default taken from each table's ``attrs["n_rows"]``.

    Returns
    -------
    DataFrame
        One row per method: ``rows`` considered, ``groups``, ``rows_in_groups``, ``removed``,
        ``kept`` and ``removed_fraction``.

    Examples
    --------
    >>> import pandas as pd
    >>> from nemo_frames.dedup import exact_duplicates, summary
    >>> df = pd.DataFrame({"key": ["a", "b", "c"], "content_hash": ["h1", "h1", "h2"]})
    >>> summary(exact_duplicates(df))[["method", "rows", "removed", "kept"]].to_dict("records")
    [{'method': 'exact', 'rows': 3, 'removed': 1, 'kept': 2}]
    """
    tables = [dup_tables] if isinstance(dup_tables, pd.DataFrame) else list(dup_tables)
    rows = []
    for t in tables:
        method = t.attrs.get("method") or (t["method"].iloc[0] if len(t) else "unknown")
        total = n_rows if n_rows is not None else t.attrs.get("n_rows")
        removed = int((~t["is_survivor"]).sum())
        rows.append(
            {
                "method": method,
                "rows": total,
                "groups": int(t["group_id"].nunique()),
                "rows_in_groups": len(t),
                "removed": removed,
                "kept": None if total is None else int(total) - removed,
                "removed_fraction": None if not total else removed / int(total),
            }
        )
    return pd.DataFrame(rows)


def _reason(row: Any) -> str:
    method = row.method
    if method == "exact":
        detail = "same content_hash"
    elif method == "perceptual":
        detail = f"hamming {round((1.0 - row.max_similarity) * 64)}"
    else:
        detail = f"sim {row.max_similarity:.3f}"
    return f"dedup_{method}: duplicate of {row.matched_key} ({detail})"


def drop_duplicates(df: Any, dup_table: pd.DataFrame) -> Any:
    """Mark every non-survivor of ``dup_table`` as filtered in the ledger (rows are not dropped).

    The reason reads ``dedup_<method>: duplicate of <matched_key> (<detail>)``. Rows already
    filtered or errored keep their first reason.

    Parameters
    ----------
    df : pandas or Dask DataFrame
        The sample table (with ``key``).
    dup_table : DataFrame
        From :func:`exact_duplicates`, :func:`perceptual_duplicates` or
        :func:`semantic_duplicates` (or several concatenated: the first row per key wins).

    Examples
    --------
    >>> import pandas as pd
    >>> from nemo_frames.dedup import exact_duplicates, drop_duplicates
    >>> df = pd.DataFrame({"key": ["a", "b"], "content_hash": ["h", "h"]})
    >>> drop_duplicates(df, exact_duplicates(df))["nf_reason"].tolist()
    [<NA>, 'dedup_exact: duplicate of a (same content_hash)']
    """
    losers = dup_table[~dup_table["is_survivor"]].drop_duplicates("key", keep="first")
    reasons = pd.Series([_reason(r) for r in losers.itertuples(index=False)], index=losers["key"].astype(object), dtype=object)

    if hasattr(df, "map_partitions"):
        import dask

        # The reasons go into the graph once, as one key every partition depends on; captured in a
        # closure they would travel with each task, partitions × duplicates bytes at scale.
        return df.map_partitions(_mark_reasons, dask.delayed(reasons, pure=True),
                                 meta=ledger.ensure_ledger(df._meta))
    return _mark_reasons(df, reasons)


def _mark_reasons(part: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    part = ledger.ensure_ledger(part)
    r = part[KEY].astype(object).map(reasons)
    keep = r.isna().to_numpy()
    return ledger.mark_filtered(part, keep, pd.Series(r.to_numpy(), index=part.index))
