"""Filters: keep masks with a reason for every drop.

A filter never removes rows: it marks ``ok`` rows it would drop as ``filtered``
with ``nf_reason = "<name>: <column>=<value> <failed condition>"``. The first
filter to drop a row names it. Plain dataframe expressions still work for ad-hoc
exploration (``df[df.aesthetic_score >= 5]``); use these where the drop must be
recorded.

Definitions (DESIGN §5): aesthetic keeps ``score >= threshold``; NSFW keeps
``score < threshold``; blur keeps ``blur_score >= threshold`` (default 100); QR
keeps ``qr_area_ratio < threshold`` (default 0.05); CLIP score keeps
``clip_score >= threshold``. A row whose score is missing (null) while its status
is ``ok`` is dropped with reason ``"<name>: <column> is missing"``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import dask.dataframe as dd
import numpy as np
import pandas as pd

from nemo_frames import schema as S
from nemo_frames.ledger import ensure_ledger, mark_filtered

Op = Literal[">=", ">", "<=", "<", "==", "!="]
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_NEGATION = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


class FilterError(ValueError):
    """A filter cannot run on this table (missing column, bad operator)."""


class _MaskFilter:
    """Shared stage plumbing: a subclass provides ``keep(df) -> (mask, reasons)``."""

    def keep(self, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        raise NotImplementedError

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        keep, reason = self.keep(df)
        return mark_filtered(df, keep, reason)

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        return ensure_ledger(meta)


@dataclass(frozen=True)
class Threshold(_MaskFilter):
    """Keep rows where ``column <op> value``; record the others as filtered.

    Parameters
    ----------
    column : str
        Score column, e.g. ``"aesthetic_score"``.
    op : {">=", ">", "<=", "<", "==", "!="}
        The condition a row must meet to be kept.
    value : float
        The threshold.
    name : str, optional
        Name recorded in ``nf_reason`` (default: the column).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"key": ["a", "b"], "blur_score": [5.0, 500.0]})
    >>> out = Threshold("blur_score", ">=", 100.0, name="blur").transform(df)
    >>> out[["key", "nf_status", "nf_reason"]].values.tolist()
    [['a', 'filtered', 'blur: blur_score=5 < 100'], ['b', 'ok', <NA>]]
    """

    column: str
    op: Op
    value: float
    name: str | None = None
    kind: ClassVar[str] = "threshold"

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise FilterError(f"filter on {self.column!r}: op={self.op!r}; expected one of {sorted(_OPS)}")

    @property
    def label(self) -> str:
        return self.name or self.column

    def keep(self, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """(keep mask, reason per row) for one partition."""
        if self.column not in df.columns:
            raise FilterError(
                f"filter {self.label!r}: column {self.column!r} not in the table (found {sorted(df.columns)[:12]}...); "
                "run the scoring pass that computes it first (nemo_frames.scoring)"
            )
        col = df[self.column]
        missing = col.isna()
        values = pd.to_numeric(col, errors="coerce").astype("float64")
        keep = pd.Series(_OPS[self.op](values.to_numpy(), self.value), index=df.index) & ~missing
        bad = ~keep
        reason = pd.Series(pd.NA, index=df.index, dtype=pd.StringDtype("pyarrow"))
        if bad.any():
            neg = _NEGATION[self.op]
            txt = [
                f"{self.label}: {self.column} is missing" if m else f"{self.label}: {self.column}={v:.4g} {neg} {self.value:g}"
                for v, m in zip(values[bad].to_numpy(), missing[bad].to_numpy(), strict=True)
            ]
            reason[bad] = txt
        return keep, reason


@dataclass(frozen=True)
class Query(_MaskFilter):
    """Keep rows matching a pandas query string (``"width >= 256 and caption.str.len() > 3"``).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"width": [100, 400]})
    >>> Query("width >= 256").transform(df).nf_status.tolist()
    ['filtered', 'ok']
    """

    expr: str
    name: str | None = None
    kind: ClassVar[str] = "query"

    @property
    def label(self) -> str:
        return self.name or "query"

    def keep(self, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        try:
            mask = df.eval(self.expr, engine="python")
        except Exception as exc:
            raise FilterError(f"filter {self.label!r}: cannot evaluate {self.expr!r} ({type(exc).__name__}: {exc})") from None
        if not isinstance(mask, pd.Series) or not (mask.dtype == bool or str(mask.dtype) == "boolean"):
            raise FilterError(f"filter {self.label!r}: {self.expr!r} must give a boolean per row, got {type(mask).__name__}")
        keep = mask.fillna(False).astype(bool)
        reason = pd.Series(pd.NA, index=df.index, dtype=pd.StringDtype("pyarrow"))
        reason[~keep] = f"{self.label}: not ({self.expr})"
        return keep, reason


@dataclass(frozen=True)
class MinSize(_MaskFilter):
    """Keep images whose shorter side is at least ``min_side`` pixels (and, optionally, aspect ≤ ``max_aspect``)."""

    min_side: int = 0
    max_aspect: float | None = None
    name: str = "size"
    kind: ClassVar[str] = "size"

    @property
    def label(self) -> str:
        return self.name

    def keep(self, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        for c in (S.WIDTH, S.HEIGHT):
            if c not in df.columns:
                raise FilterError(f"filter {self.name!r}: column {c!r} missing; run nemo_frames.scoring first")
        w = df[S.WIDTH].astype("float64")
        h = df[S.HEIGHT].astype("float64")
        short = np.minimum(w, h)
        aspect = np.maximum(w, h) / np.maximum(short, 1)
        keep = (short >= self.min_side).fillna(False)
        if self.max_aspect is not None:
            keep &= (aspect <= self.max_aspect).fillna(False)
        reason = pd.Series(pd.NA, index=df.index, dtype=pd.StringDtype("pyarrow"))
        bad = ~keep
        reason[bad] = [
            f"{self.name}: {int(a) if a == a else '?'}x{int(b) if b == b else '?'} "
            + (f"short side < {self.min_side}" if not (s >= self.min_side) else f"aspect > {self.max_aspect}")
            for a, b, s in zip(w[bad], h[bad], short[bad], strict=True)
        ]
        return keep, reason


Filter = Threshold | Query | MinSize


def aesthetic(min_score: float = 5.0) -> Threshold:
    """LAION aesthetic score: keep ``aesthetic_score >= min_score``."""
    return Threshold(S.AESTHETIC_SCORE, ">=", min_score, name="aesthetic")


def nsfw(max_score: float = 0.5) -> Threshold:
    """LAION NSFW probability: keep ``nsfw_score < max_score``."""
    return Threshold(S.NSFW_SCORE, "<", max_score, name="nsfw")


def blur(min_score: float = 100.0) -> Threshold:
    """Variance of the Laplacian: keep ``blur_score >= min_score``."""
    return Threshold(S.BLUR_SCORE, ">=", min_score, name="blur")


def qr(max_ratio: float = 0.05) -> Threshold:
    """QR-code area ratio: keep ``qr_area_ratio < max_ratio``."""
    return Threshold(S.QR_AREA_RATIO, "<", max_ratio, name="qr")


def clip_score(min_score: float = 0.2) -> Threshold:
    """CLIP image-text cosine: keep ``clip_score >= min_score``."""
    return Threshold(S.CLIP_SCORE, ">=", min_score, name="clip_score")


def apply_filters(df: dd.DataFrame | pd.DataFrame, filters: Sequence[Filter]) -> dd.DataFrame | pd.DataFrame:
    """Apply filters in order, marking dropped rows in the ledger (first reason wins).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"key": list("abc"), "blur_score": [5.0, 500.0, 900.0], "qr_area_ratio": [0.0, 0.3, 0.0]})
    >>> apply_filters(df, [blur(), qr()]).nf_reason.tolist()
    ['blur: blur_score=5 < 100', 'qr: qr_area_ratio=0.3 >= 0.05', <NA>]
    """

    def run(p: pd.DataFrame) -> pd.DataFrame:
        p = ensure_ledger(p)
        for f in filters:
            p = f.transform(p)
        return p

    if isinstance(df, pd.DataFrame):
        return run(df)
    return df.map_partitions(run, meta=ensure_ledger(df._meta))


def keep_mask(df: pd.DataFrame, f: Filter) -> tuple[pd.Series, pd.Series]:
    """The keep mask and reasons of one filter, without touching the ledger (for previews)."""
    return f.keep(df)
