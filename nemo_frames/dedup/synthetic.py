"""Synthetic embeddings with planted near-duplicates, for tests, benchmarks and eps tuning.

Rows are unit vectors around ``n_centers`` random centres; a fraction of them get one planted
copy at an exact cosine (``x' = c·x + √(1−c²)·z`` with ``z ⊥ x``). Partitions are generated
lazily and deterministically, so a million rows never need to sit in memory at once.

Isotropic blobs (the default) are the easy case for k-means-bucketed dedup: a random offset
``z`` is nearly orthogonal to every centroid difference in 768 dimensions, so few planted pairs
straddle a k-means boundary. Real embeddings vary along a few directions, and k-means cuts
along exactly those. ``axes > 0`` gives every centre that many principal directions carrying
``axis_weight`` of the spread, and ``aligned`` puts that fraction of each duplicate's offset
(by energy) along its centre's directions: the hard case for boundary recall.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from nemo_frames.backend import from_matrix


def planted_partition(
    p: int,
    *,
    rows: int,
    d: int,
    n_centers: int,
    dup_fraction: float,
    cosine: float,
    spread: float,
    seed: int,
    axes: int = 0,
    axis_weight: float = 0.9,
    aligned: float = 0.5,
) -> pd.DataFrame:
    """Partition ``p``: ``rows`` base rows (keys ``b<p>-<i>``) plus their planted copies (``c<p>-<i>``)."""
    centers = _centers(n_centers, d, seed)
    rng = np.random.default_rng([seed, p])
    which = rng.integers(0, n_centers, rows)
    noise = rng.standard_normal((rows, d), dtype=np.float32)
    if axes:
        ax = _axes(n_centers, axes, d, seed)  # (centres, axes, d), unit rows
        g = rng.standard_normal((rows, axes), dtype=np.float32)
        along = np.einsum("na,nad->nd", g, ax[which]) * np.float32(math.sqrt(d / axes))
        noise = np.float32(math.sqrt(1.0 - axis_weight)) * noise + np.float32(math.sqrt(axis_weight)) * along
    x = centers[which] + noise * np.float32(spread / math.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n_dup = round(rows * dup_fraction)
    src = rng.choice(rows, n_dup, replace=False) if n_dup else np.zeros(0, np.int64)
    z = rng.standard_normal((n_dup, d), dtype=np.float32)
    if axes and n_dup:
        za = np.einsum("na,nad->nd", rng.standard_normal((n_dup, axes), dtype=np.float32), ax[which[src]])
        z = (np.float32(math.sqrt(1.0 - aligned)) * z / np.linalg.norm(z, axis=1, keepdims=True)
             + np.float32(math.sqrt(aligned)) * za / np.linalg.norm(za, axis=1, keepdims=True))
    base = x[src]
    z -= (z * base).sum(axis=1, keepdims=True) * base  # orthogonal to the original
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    dup = np.float32(cosine) * base + np.float32(math.sqrt(1.0 - cosine**2)) * z
    keys = [f"b{p:05d}-{i:07d}" for i in range(rows)] + [f"c{p:05d}-{i:07d}" for i in src]
    emb = np.concatenate([x, dup]).astype(np.float32)
    perm = rng.permutation(len(keys))
    return pd.DataFrame(
        {"key": pd.array(np.asarray(keys, dtype=object)[perm], dtype=pd.StringDtype("pyarrow")),
         "aesthetic_score": rng.random(len(keys)).astype(np.float32)}
    ).assign(embedding=from_matrix(emb[perm]))


def _centers(n: int, d: int, seed: int) -> np.ndarray:
    c = np.random.default_rng([seed, 2**31]).standard_normal((n, d), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def _axes(n: int, k: int, d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng([seed, 2**31 + 1]).standard_normal((n, k, d), dtype=np.float32)
    return a / np.linalg.norm(a, axis=2, keepdims=True)


def planted_embeddings(
    n: int,
    *,
    d: int = 768,
    partition_rows: int = 20_000,
    n_centers: int = 200,
    dup_fraction: float = 0.05,
    cosine: float = 0.995,
    spread: float = 1.5,
    seed: int = 0,
    axes: int = 0,
    axis_weight: float = 0.9,
    aligned: float = 0.5,
) -> Any:
    """A lazy Dask frame of about ``n`` rows (``key``, ``aesthetic_score``, ``embedding``).

    About ``n / (1 + dup_fraction)`` base rows, each planted copy at cosine ``cosine`` to its
    original. The planted pairs are ``(b<p>-<i>, c<p>-<i>)``: see :func:`planted_pairs`.
    ``axes``, ``axis_weight``, ``aligned``: anisotropic blobs and duplicates offset along them
    (module docstring); ``axes=0`` is isotropic.

    Examples
    --------
    >>> ddf = planted_embeddings(1000, d=16, partition_rows=500)
    >>> len(ddf.compute()), ddf.npartitions
    (1000, 2)
    """
    import dask.dataframe as dd

    base_total = round(n / (1.0 + dup_fraction))
    parts = max(1, math.ceil(base_total / partition_rows))
    sizes = [base_total // parts + (1 if i < base_total % parts else 0) for i in range(parts)]
    kw = {"d": d, "n_centers": n_centers, "dup_fraction": dup_fraction, "cosine": cosine, "spread": spread, "seed": seed,
          "axes": axes, "axis_weight": axis_weight, "aligned": aligned}
    meta = planted_partition(0, rows=0, **kw)
    return dd.from_map(lambda a: planted_partition(a[0], rows=a[1], **kw), list(enumerate(sizes)), meta=meta,
                       enforce_metadata=False)


def planted_pairs(keys: Any) -> set[tuple[str, str]]:
    """The planted ``(original, copy)`` key pairs among ``keys``."""
    ks = set(map(str, keys))
    return {("b" + k[1:], k) for k in ks if k.startswith("c") and "b" + k[1:] in ks}


def pair_scores(dup_table: pd.DataFrame, truth: set[tuple[str, str]]) -> tuple[float, float]:
    """Pair precision and recall of a duplicates table's groups against planted pairs."""
    found: set[tuple[str, str]] = set()
    for _, g in dup_table.groupby("group_id"):
        ks = sorted(g["key"].astype(str))
        found.update((a, b) if a < b else (b, a) for i, a in enumerate(ks) for b in ks[i + 1 :])
    truth = {(a, b) if a < b else (b, a) for a, b in truth}
    hit = len(found & truth)
    return (hit / len(found) if found else 1.0), (hit / len(truth) if truth else 1.0)
