"""nemo_frames: curate image and interleaved image-text datasets as Dask dataframes.

The top-level names load their modules on first use, so ``import nemo_frames``
imports neither torch nor any GPU library.

Examples
--------
>>> import nemo_frames as nf
>>> df = nf.read_webdataset("shards/{00000..00009}.tar")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "read_webdataset": "nemo_frames.io.webdataset",
    "read_parquet": "nemo_frames.io.parquet",
    "write_parquet": "nemo_frames.io.parquet",
    "write_webdataset": "nemo_frames.io.export",
    "fetch_image_bytes": "nemo_frames.io.fetch",
    "score": "nemo_frames.scoring",
    "ScoreConfig": "nemo_frames.scoring",
    "apply_filters": "nemo_frames.filters",
    "get_client": "nemo_frames.cluster",
    "curate": "nemo_frames.pipeline",
    "PipelineConfig": "nemo_frames.config",
    "load_config": "nemo_frames.config",
    "write_report": "nemo_frames.report",
    "ClipConfig": "nemo_frames.models.clip",
    "errors_table": "nemo_frames.ledger",
    "explore": "nemo_frames.explore",
    "read_img2dataset": "nemo_frames.io.interop",
    "img2dataset_stats": "nemo_frames.io.interop",
    "read_clip_retrieval_embeddings": "nemo_frames.io.interop",
    "join_embeddings": "nemo_frames.io.interop",
}
_SUBMODULES = {"filters", "dedup", "interleaved", "ledger", "schema", "io", "images", "models", "cluster", "report", "pipeline", "config", "progress"}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"nemo_frames.{name}")
    raise AttributeError(f"module 'nemo_frames' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
