"""The interactive explorer of a run: ``nemo-frames explore RUN_DIR``, or :func:`explore` in a notebook.

A local web app over a run's tables and shards: a paginated grid with filters and sorting, the
detail of a sample (image, caption, every column, sidecar JSON, ledger reason, duplicate group),
threshold what-ifs with the YAML fragment for ``curate``, duplicate groups per method, the eps
sweep, and interleaved documents in reading order. See ``docs/explore.md``.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

__all__ = ["explore"]


def explore(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0,
            items: str | os.PathLike[str] | None = None, storage_options: dict[str, Any] | None = None) -> Any:
    """Start the explorer of ``run_dir`` in a background thread and return it.

    Parameters
    ----------
    run_dir : path
        The ``output`` directory of :func:`nemo_frames.curate` (and/or an item table in ``run_dir/items``).
    host : str
        Address to bind; loopback by default. Another address exposes the run to the network (no login).
    port : int
        Port; 0 picks a free one.
    items : path, optional
        An interleaved item table directory (default ``run_dir/items`` when present).
    storage_options : dict, optional
        fsspec options to read the input shards (default: the run config's).

    Returns
    -------
    Explorer
        ``.url``, ``.stop()``, ``.iframe()``; in Jupyter it displays as a link and an IFrame.

    Examples
    --------
    >>> import nemo_frames as nf
    >>> ex = nf.explore("demo_out")  # doctest: +SKIP
    >>> ex.url  # doctest: +SKIP
    'http://127.0.0.1:41235/'
    >>> ex.stop()  # doctest: +SKIP
    """
    try:
        import duckdb  # noqa: F401
    except ImportError:
        raise ImportError("the explorer needs DuckDB: pip install 'nemo-frames[explore]' (or pip install duckdb)") from None
    from nemo_frames.explore.data import RunData
    from nemo_frames.explore.server import Explorer

    return Explorer(RunData(run_dir, items=items, storage_options=storage_options), host=host, port=port)


class _CallableModule(types.ModuleType):
    # ``import nemo_frames.explore`` binds this module as ``nemo_frames.explore``; calling it still works,
    # so ``nf.explore(run_dir)`` means the function whichever way the name was reached.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return explore(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
