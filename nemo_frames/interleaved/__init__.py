"""Interleaved image-text documents as an item table (one row per item, grouped by ``sample_id``).

Read MINT-1T-style WebDataset shards or item-table Parquet, score and filter items, convert to and from the
sample table, and write both formats back. Definitions: ``docs/interleaved.md``.
"""

from __future__ import annotations

from nemo_frames.interleaved.materialize import materialize
from nemo_frames.interleaved.ops import dropped_items, item_counts, kept_items, renumber
from nemo_frames.interleaved.reader import read_interleaved_parquet, read_interleaved_webdataset
from nemo_frames.interleaved.schema import canonicalize, sort_items, validate
from nemo_frames.interleaved.writer import write_interleaved_parquet, write_interleaved_webdataset

__all__ = [
    "canonicalize",
    "dropped_items",
    "item_counts",
    "kept_items",
    "materialize",
    "read_interleaved_parquet",
    "read_interleaved_webdataset",
    "renumber",
    "sort_items",
    "validate",
    "write_interleaved_parquet",
    "write_interleaved_webdataset",
]

from nemo_frames.interleaved.filters import (  # noqa: E402
    blur_filter,
    clip_alignment_filter,
    image_text_ratio_filter,
    qr_filter,
    score_items,
)

__all__ += ["blur_filter", "clip_alignment_filter", "image_text_ratio_filter", "qr_filter", "score_items"]
