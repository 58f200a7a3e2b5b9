"""The stage contract: a typed config, a pure per-partition function, an explicit meta.

A stage is applied to a Dask dataframe with :func:`apply`, which always passes
``meta`` built from the input's ``_meta`` (so the same code runs on pandas and
cuDF partitions and Dask never runs the function on fake data).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import dask.dataframe as dd
import pandas as pd


@runtime_checkable
class Stage(Protocol):
    """What every stage provides.

    Attributes
    ----------
    name : str
        Short name used in error messages, progress bars and ledger reasons.
    """

    name: ClassVar[str]

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """Apply the stage to one partition (pure: same input, same output)."""
        ...

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        """The empty output frame for an input frame ``meta``."""
        ...


def apply(ddf: dd.DataFrame, stage: Stage, **kwargs: Any) -> dd.DataFrame:
    """Run ``stage.transform`` on every partition of ``ddf`` with an explicit meta.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> from nemo_frames.filters import Threshold
    >>> ddf = dd.from_pandas(pd.DataFrame({"key": ["a", "b"], "blur_score": [5.0, 500.0]}), npartitions=1)
    >>> apply(ddf, Threshold("blur_score", ">=", 100.0)).compute()["nf_status"].tolist()
    ['filtered', 'ok']
    """
    return ddf.map_partitions(stage.transform, meta=stage.meta(ddf._meta), **kwargs)
