"""Deduplication: exact (content hash), perceptual (pHash Hamming), semantic (embeddings).

Every method returns an explainable duplicates table before anything is removed (see
``nemo_frames.dedup._table``); :func:`drop_duplicates` then marks the non-survivors as
filtered in the sample table's ledger. Definitions: ``docs/operators/dedup.md``.
"""

from __future__ import annotations

from nemo_frames.dedup._table import DUP_COLUMNS, drop_duplicates, summary
from nemo_frames.dedup.exact import exact_duplicates
from nemo_frames.dedup.perceptual import hamming_pairs, perceptual_duplicates, phash_image
from nemo_frames.dedup.semantic import eps_sweep, mark_invalid_embeddings, semantic_duplicates

__all__ = [
    "DUP_COLUMNS",
    "drop_duplicates",
    "eps_sweep",
    "exact_duplicates",
    "hamming_pairs",
    "mark_invalid_embeddings",
    "perceptual_duplicates",
    "phash_image",
    "semantic_duplicates",
    "summary",
]
