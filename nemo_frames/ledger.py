"""The per-sample ledger: status, error and filter-reason columns, and the errors table.

Every input sample ends as exactly one of ``ok`` (kept), ``filtered`` (with a
reason in ``nf_reason``) or ``error`` (with ``"<code>: <message>"`` in ``nf_error``).
Stages never drop rows; they mark them, and export writes only ``ok`` rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from nemo_frames.schema import ERROR, REASON, STATUS, ErrorCode, Status, error_code, error_text

STRING = pd.StringDtype("pyarrow")
LEDGER_COLUMNS = (STATUS, ERROR, REASON)


def ensure_ledger(df: pd.DataFrame) -> pd.DataFrame:
    """Add the ledger columns (all ``ok``) where they are missing."""
    out = df
    if STATUS not in df.columns:
        out = out.assign(**{STATUS: pd.Series(Status.OK.value, index=df.index, dtype=STRING)})
    for col in (ERROR, REASON):
        if col not in out.columns:
            out = out.assign(**{col: pd.Series(pd.NA, index=df.index, dtype=STRING)})
    return out


def mark_error(df: pd.DataFrame, mask: Any, code: ErrorCode | str, message: str | pd.Series) -> pd.DataFrame:
    """Mark rows as errored with ``code``; rows already errored keep their first error."""
    df = ensure_ledger(df)
    mask = pd.Series(mask, index=df.index).fillna(False).astype(bool) & (df[STATUS] != Status.ERROR.value)
    if not mask.any():
        return df
    df = df.copy()
    if isinstance(message, pd.Series):
        text = message[mask].astype(str).map(lambda m: error_text(code, m))
    else:
        text = error_text(code, message)
    df.loc[mask, STATUS] = Status.ERROR.value
    df.loc[mask, ERROR] = text
    return df


def mark_filtered(df: pd.DataFrame, keep: Any, reason: str | pd.Series) -> pd.DataFrame:
    """Mark ``ok`` rows where ``keep`` is False as filtered with ``reason``.

    Rows already filtered or errored are left alone, so the first reason wins and
    the order in which filters run is recorded.
    """
    df = ensure_ledger(df)
    keep = pd.Series(keep, index=df.index)
    drop = ~keep.fillna(True).astype(bool) & (df[STATUS] == Status.OK.value)
    if not drop.any():
        return df
    df = df.copy()
    df.loc[drop, STATUS] = Status.FILTERED.value
    df.loc[drop, REASON] = reason[drop].astype(str) if isinstance(reason, pd.Series) else reason
    return df


def reason_name(reason: Any) -> str | None:
    """The filter name part of an ``nf_reason`` value (``"blur: blur_score=3 < 100"`` → ``"blur"``)."""
    if reason is None or (not isinstance(reason, str) and pd.isna(reason)):
        return None
    return str(reason).split(":", 1)[0]


def counts(df: pd.DataFrame) -> dict[str, Any]:
    """Counts by status, by error code and by filter reason for one (pandas) partition."""
    df = ensure_ledger(df)
    status = Counter(df[STATUS].astype(str))
    errors = Counter(c for c in map(error_code, df.loc[df[STATUS] == Status.ERROR.value, ERROR]) if c)
    reasons = Counter(
        r for r in map(reason_name, df.loc[df[STATUS] == Status.FILTERED.value, REASON]) if r
    )
    return {
        "samples": len(df),
        "by_status": dict(sorted(status.items())),
        "errors_by_code": dict(sorted(errors.items())),
        "filtered_by_reason": dict(sorted(reasons.items())),
    }


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up :func:`counts` results."""
    out: dict[str, Any] = {"samples": 0, "by_status": Counter(), "errors_by_code": Counter(), "filtered_by_reason": Counter()}
    for p in parts:
        out["samples"] += p["samples"]
        for k in ("by_status", "errors_by_code", "filtered_by_reason"):
            out[k].update(p[k])
    return {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in out.items()}


def errors_table(df: Any) -> Any:
    """The errored rows of a pandas or Dask frame, with an ``error_code`` column for grouping.

    Examples
    --------
    >>> import pandas as pd
    >>> df = mark_error(pd.DataFrame({"key": ["a", "b"]}), [False, True], "decode_error", "bad bytes")
    >>> errors_table(df)[["key", "error_code"]].values.tolist()
    [['b', 'decode_error']]
    """

    def add_code(p: pd.DataFrame) -> pd.DataFrame:
        p = p[p[STATUS] == Status.ERROR.value]
        return p.assign(error_code=p[ERROR].map(error_code).astype(STRING))

    if isinstance(df, pd.DataFrame):
        return add_code(df)
    return df.map_partitions(add_code, meta=add_code(df._meta))
