"""Per-sample bookkeeping of the item table: renumbering, empty samples, kept and dropped rows, counts.

The ledger of the item table is the sample table's, row by row: a dropped item is
marked ``nf_status="filtered"`` with ``nf_reason="<filter>: <detail>"``, an item that
could not be read or fetched ``nf_status="error"`` with ``nf_error="<code>: <message>"``.
After every drop the ``ok`` content rows of the sample are renumbered 0…k−1 (order
kept), and a sample left with no ``ok`` content has its metadata row marked
``filtered`` with reason ``empty_sample``. A document that had no item to begin with is kept
(NeMo Curator keeps it too) unless :func:`drop_empty_documents` is asked for. ``kept_items`` is then a valid item table
and ``dropped_items`` the drops table.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from nemo_frames import schema as S
from nemo_frames.interleaved import schema as IS
from nemo_frames.ledger import ensure_ledger, mark_filtered
from nemo_frames.schema import Status, error_code


def ensure_item_ledger(df: pd.DataFrame) -> pd.DataFrame:
    """Ledger columns, plus ``nf_input_position`` (= ``position``) where missing.

    A frame whose index has repeats (e.g. a computed multi-partition frame) gets a fresh
    RangeIndex, because the ledger marks rows by index label.
    """
    if not df.index.is_unique:
        df = df.reset_index(drop=True)
    df = ensure_ledger(df)
    if IS.INPUT_POSITION not in df.columns:
        df = df.assign(**{IS.INPUT_POSITION: df[IS.POSITION].astype("Int32")})
    return df


def renumber(df: pd.DataFrame) -> pd.DataFrame:
    """Renumber ``ok`` content rows 0…k−1 per sample and mark samples with no ``ok`` content left.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"sample_id": ["a"] * 4, "position": [-1, 0, 1, 2],
    ...     "modality": ["metadata", "text", "image", "text"],
    ...     "nf_status": ["ok", "ok", "filtered", "ok"]})
    >>> renumber(df).position.tolist()
    [-1, 0, 1, 1]
    """
    df = ensure_item_ledger(df)
    ok = (df[S.STATUS] == Status.OK.value).to_numpy()
    content = ok & (df[IS.MODALITY] != "metadata").to_numpy() & (df[IS.POSITION].fillna(-9).to_numpy() >= 0)
    pos = df[IS.POSITION].astype("Int32").to_numpy(dtype="float64", na_value=np.nan)
    if content.any():
        idx = np.flatnonzero(content)
        sids = df[IS.SAMPLE_ID].to_numpy(dtype=object, na_value=None)[idx]
        sid_codes, _ = pd.factorize(pd.Series(sids, dtype=object), use_na_sentinel=False)
        order = np.lexsort((np.arange(len(idx)), pos[idx], sid_codes))
        sorted_codes = sid_codes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
        run = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        pos[idx[order]] = run
    pos = pd.array(np.where(np.isnan(pos), 0, pos).astype("int64"), dtype="Int32").copy()
    pos[np.isnan(df[IS.POSITION].astype("Int32").to_numpy(dtype="float64", na_value=np.nan))] = pd.NA
    pos = pd.Series(pos, index=df.index)
    out = df.assign(**{IS.POSITION: pos})
    with_content = set(out.loc[content, IS.SAMPLE_ID].dropna())
    # A document that never had an item (no text, no image: NeMo keeps its metadata row) is kept;
    # only one whose items were all dropped goes. drop_empty_documents drops the former on request.
    had_content = set(out.loc[(out[IS.MODALITY] != "metadata").to_numpy(), IS.SAMPLE_ID].dropna())
    meta_ok = ok & (out[IS.MODALITY] == "metadata").to_numpy()
    sid = out[IS.SAMPLE_ID]
    empty = meta_ok & ~sid.isin(with_content).to_numpy() & sid.isin(had_content).to_numpy()
    if empty.any():
        out = mark_filtered(out, ~empty, "empty_sample: no content left in the sample")
    return out


EMPTY_DOCUMENT = "empty_document"
"""Reason of :func:`drop_empty_documents`."""


def drop_empty_documents(df: pd.DataFrame) -> pd.DataFrame:
    """Mark documents that have no text and no image item at all as ``filtered`` (``empty_document``).

    By default such a document is kept, as NeMo Curator keeps it (its metadata row is the
    document); call this (or pass ``empty_documents="drop"`` to the readers) to drop it with a
    recorded reason. A document emptied by a filter is dropped anyway (``empty_sample``).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"sample_id": ["a", "b", "b"], "position": [-1, -1, 0],
    ...     "modality": ["metadata", "metadata", "text"], "text_content": [None, None, "hi"]})
    >>> drop_empty_documents(df)[["sample_id", "nf_status", "nf_reason"]].values.tolist()
    [['a', 'filtered', 'empty_document: no text and no image item'], ['b', 'ok', <NA>], ['b', 'ok', <NA>]]
    """
    df = ensure_item_ledger(df)
    items = set(df.loc[(df[IS.MODALITY] != "metadata").to_numpy(), IS.SAMPLE_ID].dropna())
    empty = ((df[IS.MODALITY] == "metadata") & df[IS.SAMPLE_ID].notna() & ~df[IS.SAMPLE_ID].isin(items)).to_numpy()
    empty &= (df[S.STATUS] == Status.OK.value).to_numpy()
    if not empty.any():
        return df
    return mark_filtered(df, ~empty, f"{EMPTY_DOCUMENT}: no text and no image item")


def kept_items(df: Any) -> Any:
    """The ``ok`` rows (pandas or Dask): a valid item table."""
    return df[df[S.STATUS] == Status.OK.value]


def dropped_items(df: Any) -> Any:
    """The drops table: rows that are ``filtered`` (with ``nf_reason``) or ``error`` (with ``nf_error``)."""
    return df[df[S.STATUS] != Status.OK.value]


def item_counts(df: pd.DataFrame) -> dict[str, Any]:
    """Counts of one pandas partition: items by status × modality, samples kept, reasons and error codes."""
    df = ensure_item_ledger(df)
    st = df[S.STATUS].astype(str)
    mod = df[IS.MODALITY].astype(str)
    by = Counter(f"{m}:{s}" for m, s in zip(mod, st, strict=True))
    ok_samples = df.loc[(st == "ok") & (mod == "metadata"), IS.SAMPLE_ID].nunique()
    reasons = Counter(str(r).split(":", 1)[0] for r in df.loc[st == Status.FILTERED.value, S.REASON].dropna())
    errors = Counter(c for c in map(error_code, df.loc[st == Status.ERROR.value, S.ERROR].tolist()) if c)
    return {
        "items": len(df),
        "samples_in": int(df[IS.SAMPLE_ID].dropna().nunique()),
        "samples_ok": int(ok_samples),
        "items_by_modality_status": dict(sorted(by.items())),
        "filtered_by_reason": dict(sorted(reasons.items())),
        "errors_by_code": dict(sorted(errors.items())),
    }


def merge_item_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up :func:`item_counts` results."""
    out: dict[str, Any] = {"items": 0, "samples_in": 0, "samples_ok": 0}
    cs: dict[str, Counter] = {k: Counter() for k in ("items_by_modality_status", "filtered_by_reason", "errors_by_code")}
    for p in parts:
        for k in ("items", "samples_in", "samples_ok"):
            out[k] += p[k]
        for k in cs:
            cs[k].update(p[k])
    out.update({k: dict(sorted(v.items())) for k, v in cs.items()})
    return out


__all__ = ["EMPTY_DOCUMENT", "drop_empty_documents", "dropped_items", "ensure_item_ledger", "item_counts", "kept_items", "merge_item_counts", "renumber"]
