"""Semantic dedup: k-means on normalised embeddings, then near-duplicates inside each cluster.

Passes (each checkpointed, so a killed run resumes where it stopped):

1. **fit** – a deterministic sample (the rows whose key hashes lowest, at most ``max_fit_rows``,
   optionally thinned to ``sample_fraction`` first) is gathered by a tree reduction and k-means
   is fit on it (faiss or scikit-learn on CPU, cuML on GPU). The sample does not depend on the
   partitioning, so neither do the centroids.
2. **assign** – every input partition assigns its rows to the nearest centroid (cosine) and
   writes them, grouped into buckets of clusters, as Parquet files. A row is also written, as a
   *boundary copy*, to each of its next-nearest clusters within ``boundary_margin +
   boundary_scale·√(2·eps)·‖c_a − c_b‖`` cosine of its nearest (its primary cluster is
   recorded). No Dask shuffle
   of the embedding column ever happens (DESIGN §6); a bucket is a plain set of files.
3. **pairs** – one task per bucket reads its files and processes one cluster at a time: cosine
   similarity in row blocks (BLAS or torch, upper triangle only), edges where similarity
   ``≥ 1 − eps`` folded into connected components block by block. Bit-identical rows are
   collapsed to one vector first. Clusters larger than ``max_cluster_size`` (boundary
   copies included) are split by recursive 2-means first. One result file and one done marker
   per cluster.
4. **merge** (``components`` only) – the per-cluster components are joined across clusters on
   the key (a row placed in two clusters links their groups), then one survivor per group is
   chosen by policy. The per-cluster results are small (rows in groups only).

Rules (``mode``):

``components`` (default) – the SemDeDup paper's "keep one per group": rows joined by a chain of
edges form one group, the best-ranked row survives. Boundary copies take part, so pairs that
straddle a k-means boundary are found.

``nemo_curator`` – NeMo Curator's rule: rank the rows of a cluster by policy, and remove every
row whose similarity to *any* earlier-ranked row is ``≥ 1 − eps``, whether or not that earlier
row was itself removed. A chain A~B~C (A≁C) ranked A, B, C keeps only A (like ``components``);
ranked A, C, B it keeps A and C (``components`` keeps only A). Boundary copies are ignored
(exactly NeMo's hard assignment), and the default margin is 0 in this mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nemo_frames import backend as nfb
from nemo_frames.dedup._checkpoint import Checkpoint
from nemo_frames.dedup._table import (
    DUP_DTYPES,
    Policy,
    check_unique_keys,
    empty_dup_table,
    finish_dup_table,
    group_min_key,
    rank_value,
)
from nemo_frames.schema import EMBEDDING, KEY, STATUS, ErrorCode, Status

Mode = Literal["components", "nemo_curator"]
Similarity = Literal["auto", "numpy", "torch"]
ROWS_PER_CLUSTER = 1000  # default n_clusters = ceil(rows / this)
ROWS_PER_BUCKET = 50_000  # rows (in their nearest cluster) of one bucket, one pairs task
READ_ROWS = 50_000  # rows, boundary copies included, that a pairs or sweep task reads at a time
# Boundary copies in ``components`` mode: a row goes also to each of its BOUNDARY_CANDIDATES
# next-nearest clusters j whose cosine is within scale·√(2·eps)·‖c_nearest − c_j‖ of the nearest.
# scale 0.5 is sound (a pair within eps straddling clusters a, b has gap_x + gap_y ≤ √(2·eps)·‖c_a − c_b‖,
# so one of the two rows is copied); the default is measured on anisotropic planted data
# (benchmarks/semdedup_planted.py, docs/operators/dedup.md).
BOUNDARY_SCALE = 0.25
BOUNDARY_CANDIDATES = 8
_TIE = 1e-4  # float32 cosine decisions closer than this are re-made in float64


@dataclass(frozen=True)
class SemanticConfig:
    """Settings of one semantic dedup run (everything that changes its output)."""

    eps: float = 0.01
    n_clusters: int | None = None
    sample_fraction: float = 1.0
    max_fit_rows: int = 200_000
    policy: Policy = "farthest_centroid"
    score_column: str | None = None
    mode: Mode = "components"
    max_cluster_size: int = 20_000
    backend: nfb.KMeansBackend = "auto"
    max_iter: int = 20
    seed: int = 0
    block_size: int = 1024
    similarity: Similarity = "auto"
    embedding_column: str = EMBEDDING
    boundary_margin: float = 0.0
    boundary_scale: float = 0.0

    def validate(self) -> None:
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps must be in [0, 1): similarity threshold is 1 - eps; found {self.eps}")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction must be in (0, 1], found {self.sample_fraction}")
        if self.mode not in ("components", "nemo_curator"):
            raise ValueError(f"mode must be 'components' or 'nemo_curator', found {self.mode!r}")
        if self.policy == "max_score" and not self.score_column:
            raise ValueError("policy='max_score' needs score_column=<a numeric column>, e.g. 'aesthetic_score'")
        if self.max_cluster_size < 2:
            raise ValueError(f"max_cluster_size must be >= 2, found {self.max_cluster_size}")
        if not 0.0 <= self.boundary_margin < 2.0:
            raise ValueError(f"boundary_margin must be in [0, 2) (a cosine gap); found {self.boundary_margin}")
        if not 0.0 <= self.boundary_scale <= 1.0:
            raise ValueError(f"boundary_scale must be in [0, 1] (0.5 is the sound value); found {self.boundary_scale}")


def _resolve_boundary(boundary_margin: float | None, boundary_scale: float | None, mode: str) -> tuple[float, float]:
    """``(margin, scale)``: by default only ``components`` writes boundary copies, by ``scale``."""
    if boundary_margin is None and boundary_scale is None:
        return (0.0, BOUNDARY_SCALE) if mode == "components" else (0.0, 0.0)
    return float(boundary_margin or 0.0), float(boundary_scale or 0.0)


def _radius(cfg: SemanticConfig) -> float:
    """The eps-dependent part of the boundary allowance: ``scale · √(2·eps)`` (times ``‖c_a − c_b‖``)."""
    return cfg.boundary_scale * math.sqrt(2.0 * cfg.eps)


# --------------------------------------------------------------------------- per partition
def _prepare(pdf: Any, cfg: SemanticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """``(keys, unit-norm float32 matrix, score, excluded)`` for the ``ok`` rows of one partition."""
    pdf = nfb.to_host(pdf)
    if STATUS in pdf.columns:
        pdf = pdf[pdf[STATUS] == Status.OK.value]
    emb = pdf[cfg.embedding_column]
    has = emb.notna().to_numpy()
    excluded = int((~has).sum())
    pdf, emb = pdf[has], emb[has]
    x = nfb.to_host(nfb.to_matrix(emb)) if len(emb) else np.zeros((0, 0), np.float32)
    norm = np.linalg.norm(x, axis=1) if len(x) else np.zeros(0, np.float32)
    good = np.isfinite(norm) & (norm > 0)
    excluded += int((~good).sum())
    x = np.ascontiguousarray(x[good] / norm[good, None], dtype=np.float32)
    keys = pdf[KEY].to_numpy(dtype=object)[good]
    score = pdf[cfg.score_column].to_numpy(dtype=np.float64)[good] if cfg.score_column else None
    return keys, x, score, excluded


def _invalid_reasons(pdf: pd.DataFrame, column: str) -> pd.Series:
    """Per ``ok`` row, why its embedding cannot take part in semantic dedup (``None``: it can)."""
    out = pd.Series(None, index=pdf.index, dtype=object)
    ok = (pdf[STATUS] == Status.OK.value).to_numpy() if STATUS in pdf.columns else np.ones(len(pdf), bool)
    emb = pdf[column]
    null = emb.isna().to_numpy() & ok
    out[null] = f"column {column!r} is null"
    have = np.nonzero(ok & ~null)[0]
    if len(have):
        x = nfb.to_matrix(emb.iloc[have])  # raises, naming the column, if lengths differ
        finite = np.isfinite(x).all(axis=1)
        zero = finite & ~(np.abs(x) > 0).any(axis=1)
        out.iloc[have[~finite]] = f"column {column!r} has NaN or inf values"
        out.iloc[have[zero]] = f"column {column!r} is all zeros (no direction to compare)"
    return out


def mark_invalid_embeddings(df: Any, *, embedding_column: str = EMBEDDING) -> Any:
    """Mark ``ok`` rows whose embedding is null, has NaN/inf values or is all zeros as errors.

    :func:`semantic_duplicates` cannot compare such rows, so it leaves them out (counted in its
    table's ``attrs["excluded"]``); this records them in the ledger instead of leaving them
    ``ok`` unexamined: ``nf_status = 'error'``, ``nf_error = 'invalid_embedding: <why>'``.
    ``curate`` runs it before its semantic dedup.

    Parameters
    ----------
    df : pandas or Dask DataFrame
        The sample table.
    embedding_column : str
        The embedding column (``list<float32>``). Rows of different lengths raise ``ValueError``
        naming the column, the expected and the found lengths.

    Returns
    -------
    The same kind of frame, with the ledger columns updated.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from nemo_frames.backend import from_matrix
    >>> x = np.array([[1, 0], [0, 0], [np.nan, 1]], np.float32)
    >>> df = pd.DataFrame({"key": list("abc")}).assign(embedding=from_matrix(x))
    >>> mark_invalid_embeddings(df)["nf_error"].tolist()
    [<NA>, "invalid_embedding: column 'embedding' is all zeros (no direction to compare)", "invalid_embedding: column 'embedding' has NaN or inf values"]
    """
    from nemo_frames import ledger

    def mark(part: pd.DataFrame) -> pd.DataFrame:
        part = ledger.ensure_ledger(nfb.to_host(part))
        why = _invalid_reasons(part, embedding_column)
        bad = why.notna()
        return ledger.mark_error(part, bad, ErrorCode.INVALID_EMBEDDING, why.fillna(""))

    if embedding_column not in df.columns:
        raise KeyError(f"mark_invalid_embeddings: no column {embedding_column!r}; found {list(df.columns)}")
    if hasattr(df, "map_partitions"):
        return df.map_partitions(mark, meta=ledger.ensure_ledger(df._meta))
    return mark(df)


def _rows_digest(keys: np.ndarray, x: np.ndarray, score: np.ndarray | None) -> str:
    """What a partition fed to the assignment: its ok keys, embeddings and scores (xxh3, hex)."""
    from nemo_frames.io.commit import new_hasher

    h = new_hasher("xxh3_64")
    h.update("\n".join(map(str, keys)).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(x).tobytes())
    if score is not None:
        h.update(np.ascontiguousarray(score).tobytes())
    return h.hexdigest()


def _key_hash(keys: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(np.asarray(keys, dtype=object), categorize=False)


def _bottom(h: np.ndarray, x: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    if len(h) > cap:
        keep = np.argpartition(h, cap - 1)[:cap]
        h, x = h[keep], x[keep]
    return h, x


def _sample_part(pdf: Any, cfg: SemanticConfig) -> tuple[int, int, np.ndarray, np.ndarray]:
    keys, x, _, excluded = _prepare(pdf, cfg)
    h = _key_hash(keys)
    if cfg.sample_fraction < 1.0:
        sel = h < np.uint64(min(int(cfg.sample_fraction * 2.0**64), 2**64 - 1))
        h, x = h[sel], x[sel]
    h, x = _bottom(h, x, cfg.max_fit_rows)
    return len(keys), excluded, h, x


def _merge_samples(a: tuple, b: tuple, cap: int) -> tuple:
    if a[3].shape[1:] != b[3].shape[1:] and len(a[2]) and len(b[2]):
        raise ValueError(f"semantic_duplicates: embeddings of different dimensions ({a[3].shape[1]} vs {b[3].shape[1]})")
    n, excluded, na = a[0] + b[0], a[1] + b[1], len(a[2])
    if not len(b[2]) or not na:
        return n, excluded, *_bottom(*((a[2], a[3]) if na else (b[2], b[3])), cap)
    h = np.concatenate([a[2], b[2]])
    if len(h) <= cap:
        return n, excluded, h, np.concatenate([a[3], b[3]])
    # The kept rows are gathered from both sides directly: concatenating first held two samples of
    # max_fit_rows rows more at the top of the tree, where the samples are largest.
    keep = np.argpartition(h, cap - 1)[:cap]
    in_a = keep < na
    x = np.empty((cap, *a[3].shape[1:]), np.result_type(a[3], b[3]))
    x[in_a] = a[3][keep[in_a]]
    x[~in_a] = b[3][keep[~in_a] - na]
    return n, excluded, h[keep], x


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by cosine; near-ties re-decided in float64 so results never depend on
    how rows were batched (BLAS rounding differs with matrix shape)."""
    if not len(x):
        return np.zeros(0, np.int32)
    sims = x @ centroids.T
    top2 = np.partition(sims, -2, axis=1)[:, -2:] if sims.shape[1] > 1 else np.c_[sims, sims - 1]
    out = sims.argmax(axis=1).astype(np.int32)
    close = np.nonzero(np.abs(top2[:, 1] - top2[:, 0]) < 1e-4)[0]
    if len(close):
        out[close] = (x[close].astype(np.float64) @ centroids.T.astype(np.float64)).argmax(axis=1)
    return out


def _boundary_core(
    sims: np.ndarray, centroids: np.ndarray, margin: float, radius: float, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(first, copy_row, copy_cluster, unsure)`` from a (rows × k) similarity matrix.

    A row is copied to each of its ``m − 1`` next-nearest centroids ``j`` whose cosine is within
    ``margin + radius·‖c_first − c_j‖`` of the nearest. ``unsure`` marks rows whose decisions are
    closer than ``_TIE`` to a tie, to an allowance, or hit the cap of ``m − 1`` copies."""
    n = len(sims)
    rows = np.arange(n)
    idx = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < sims.shape[1] else np.tile(np.arange(m), (n, 1))
    top = np.take_along_axis(sims, idx, axis=1)
    fl = top.argmax(axis=1)
    first = idx[rows, fl].astype(np.int32)
    gap = top[rows, fl][:, None] - top
    gap[rows, fl] = np.inf
    unsure = gap.min(axis=1) < _TIE
    r, c = np.nonzero(gap <= margin + 2.0 * radius + _TIE)  # 2·radius: the largest possible allowance
    j = idx[r, c]
    allowed = np.full(len(r), margin)
    if radius > 0 and len(r):
        # ‖c_f − c_j‖ row by row in float64: the same value whatever rows share the call
        dot = (centroids[first[r]].astype(np.float64) * centroids[j].astype(np.float64)).sum(axis=1)
        allowed = margin + radius * np.sqrt(np.maximum(2.0 - 2.0 * dot, 0.0))
    g = gap[r, c].astype(np.float64)
    take = g <= allowed
    np.logical_or.at(unsure, r, np.abs(g - allowed) < _TIE)
    if m < sims.shape[1]:
        full = np.bincount(r[take], minlength=n) >= m - 1
        unsure |= full
    return first, r[take].astype(np.int64), j[take].astype(np.int32), unsure


def _assign_boundary(
    x: np.ndarray, centroids: np.ndarray, margin: float, radius: float = 0.0, candidates: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(nearest, copy_row, copy_cluster)``: every row's nearest centroid, and its boundary copies.

    A row is also placed in each of its ``candidates`` next-nearest clusters ``j`` whose cosine
    is within ``margin + radius·‖c_nearest − c_j‖`` of the nearest. Decisions closer than
    ``_TIE`` to a tie or to an allowance are re-made in float64, so they never depend on how
    rows were batched."""
    n, k = len(x), len(centroids)
    none = np.zeros(0, np.int64), np.zeros(0, np.int32)
    if (margin <= 0.0 and radius <= 0.0) or k < 2 or not n:
        return _assign(x, centroids), *none
    step = max(1, (1 << 24) // k)  # bound the (rows × k) similarity matrix (64 MiB per copy)
    if n > step:
        out = [_assign_boundary(x[i : i + step], centroids, margin, radius, candidates) for i in range(0, n, step)]
        return (np.concatenate([o[0] for o in out]),
                np.concatenate([o[1] + i for o, i in zip(out, range(0, n, step), strict=True)]),
                np.concatenate([o[2] for o in out]))
    m = min(k, candidates + 1)
    first, cr, cc, unsure = _boundary_core(x @ centroids.T, centroids, margin, radius, m)
    redo = np.nonzero(unsure)[0]
    if len(redo):
        f64, r64, c64, _ = _boundary_core(x[redo].astype(np.float64) @ centroids.T.astype(np.float64),
                                          centroids, margin, radius, m)
        first[redo] = f64
        keep = ~unsure[cr]
        cr, cc = np.r_[cr[keep], redo[r64]], np.r_[cc[keep], c64]
    order = np.lexsort((cc, cr))
    return first, cr[order], cc[order].astype(np.int32)


def _assign_part(pdf: Any, i: int, centroids: np.ndarray, n_buckets: int, ck: Checkpoint, cfg: SemanticConfig) -> dict:
    name = f"part-{i:06d}"
    keys, x, score, excluded = _prepare(pdf, cfg)
    digest = _rows_digest(keys, x, score)
    if ck.is_done(name):
        info = ck.read_done(name)
        if info.get("rows_digest") != digest:
            raise ValueError(
                f"semantic dedup: checkpoint {ck.dir} holds assignments of other rows for partition {i} "
                f"({info.get('rows')} rows then, {len(keys)} now, or other keys, embeddings or scores). "
                "A checkpoint_dir belongs to one input table; resuming it with another would reuse stale "
                "clusters. Fix: pass a new checkpoint_dir (or delete this one) when the table changes."
            )
        return info
    if len(x) and x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"semantic dedup: column {cfg.embedding_column!r} of partition {i} has embeddings of length {x.shape[1]}, "
            f"expected {centroids.shape[1]} (the length k-means was fit on). Every row needs an embedding from the "
            "same model: recompute them, or mark the odd rows as errors first."
        )
    first, copy, copy_cid = _assign_boundary(x, centroids, cfg.boundary_margin, _radius(cfg), BOUNDARY_CANDIDATES)
    n_rows = len(keys)
    rows = np.r_[np.arange(n_rows), copy]  # every row once in its primary cluster, plus boundary copies
    cid = np.r_[first, copy_cid].astype(np.int32)
    prim = first[rows]
    bucket = cid % n_buckets
    d = x.shape[1] if x.ndim == 2 else 0
    for b in np.unique(bucket):
        sel = np.nonzero(bucket == b)[0]
        src = rows[sel]
        cols = {
            "key": pa.array(keys[src], pa.string()),
            "cluster_id": pa.array(cid[sel], pa.int32()),
            "primary_cluster": pa.array(prim[sel], pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[src].ravel(), pa.float32()), d),
        }
        if score is not None:
            cols["score"] = pa.array(score[src], pa.float64())
        ck.write_parquet_atomic(pa.table(cols), f"bucket-{int(b):05d}/{name}")
    counts = np.bincount(cid, minlength=len(centroids))
    nz = np.nonzero(counts)[0]
    info = {"rows": n_rows, "boundary": len(copy), "excluded": excluded, "rows_digest": digest,
            "counts": {str(int(c)): int(counts[c]) for c in nz}}
    ck.mark_done(name, info)
    return info


# --------------------------------------------------------------------------- per cluster
def _torch_device() -> str:
    return "cuda" if nfb.gpu_available() else "cpu"


def _upper_blocks(x: np.ndarray, block_size: int, similarity: Similarity) -> Iterator[tuple[int, Any]]:
    """``(i0, x[i0:i1] @ x[i0:].T)`` block by block, the diagonal and below set to ``-inf``.

    A torch tensor (on the GPU when there is one) with ``similarity="torch"`` or on a CUDA machine,
    else a numpy array. Memory is ``O(block_size · n)``.
    """
    n = len(x)
    if similarity == "torch" or (similarity == "auto" and nfb.cuda_device_present()):
        import torch

        xt = torch.from_numpy(np.ascontiguousarray(x)).to(_torch_device())
        for i0 in range(0, n, block_size):
            b = min(n, i0 + block_size) - i0
            st = xt[i0 : i0 + b] @ xt[i0:].T
            st[:, :b] = st[:, :b].masked_fill(torch.ones(b, b, dtype=torch.bool, device=st.device).tril(), float("-inf"))
            yield i0, st
        return
    for i0 in range(0, n, block_size):
        b = min(n, i0 + block_size) - i0
        s = x[i0 : i0 + b] @ x[i0:].T
        s[:, :b][np.tril(np.ones((b, b), dtype=bool))] = -np.inf
        yield i0, s


def pair_pass(
    x: np.ndarray, threshold: float, *, block_size: int = 1024, earlier_max: bool = True, similarity: Similarity = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blockwise cosine over the upper triangle of ``x @ x.T`` (rows unit-norm, in rank order).

    Returns ``(i, j, sim)`` for every pair ``i < j`` with ``sim ≥ threshold``, and per row ``j``
    the highest similarity to any row ``i < j`` and that row (``-inf`` / ``-1`` for row 0): the
    NeMo Curator quantity. Memory is ``O(block_size · n)``.
    """
    n = len(x)
    best = np.full(n, -np.inf, np.float32)
    arg = np.full(n, -1, np.int64)
    ei, ej, es = [], [], []
    thr = np.float32(threshold)
    for i0, s in _upper_blocks(x, block_size, similarity):
        if not isinstance(s, np.ndarray):  # a torch tensor, on the GPU when there is one
            import torch

            if earlier_max:
                m, a = s.max(dim=0)
                m, a = m.cpu().numpy(), a.cpu().numpy()
            r, c = torch.nonzero(s >= float(thr), as_tuple=True)
            sv = s[r, c].cpu().numpy()
            r, c = r.cpu().numpy(), c.cpu().numpy()
        else:
            if earlier_max:
                a = s.argmax(axis=0)
                m = s[a, np.arange(s.shape[1])]
            r, c = np.nonzero(s >= thr)
            sv = s[r, c]
        if earlier_max:
            better = m > best[i0:]
            best[i0:][better] = m[better]
            arg[i0:][better] = a[better] + i0
        if len(r):
            ei.append(r + i0)
            ej.append(c + i0)
            es.append(sv.astype(np.float32))
    return _cat(ei, np.int64), _cat(ej, np.int64), _cat(es, np.float32), best, arg


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _prefer(best: np.ndarray, arg: np.ndarray, m: np.ndarray, a: np.ndarray) -> None:
    """In place: take ``(m, a)`` where it is more similar, or as similar with a smaller index."""
    upd = (m > best) | ((m == best) & (a < arg))
    best[upd] = m[upd]
    arg[upd] = a[upd]


def link_pass(
    x: np.ndarray, threshold: float, *, block_size: int = 1024, similarity: Similarity = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Components of the ``sim ≥ threshold`` graph without keeping its edges.

    The same blockwise upper-triangle products as :func:`pair_pass`, but each block's edges are
    folded into the component labels at once, so memory is ``O(block_size · n)`` however many
    edges a group has (``n`` near-identical rows have ``n²/2``). Returns ``(labels, nn, nn_sim,
    earlier_best, earlier_arg)``: per row its component, its most similar other row (ties: the
    smaller index; ``-1`` / ``-inf`` when none) and the NeMo quantity of :func:`pair_pass`.
    """
    n = len(x)
    labels = np.arange(n, dtype=np.int64)
    nns = np.full(n, -np.inf, np.float32)
    nn = np.full(n, -1, np.int64)
    best = np.full(n, -np.inf, np.float32)
    arg = np.full(n, -1, np.int64)
    thr = np.float32(threshold)
    for i0, s in _upper_blocks(x, block_size, similarity):
        i1 = i0 + s.shape[0]
        if not isinstance(s, np.ndarray):  # a torch tensor
            import torch

            cm, ca = (t.cpu().numpy() for t in s.max(dim=0))
            rm, ra = (t.cpu().numpy() for t in s.max(dim=1))
            r, c = (t.cpu().numpy() for t in torch.nonzero(s >= float(thr), as_tuple=True))
        else:
            ca = s.argmax(axis=0)
            cm = s[ca, np.arange(s.shape[1])]
            ra = s.argmax(axis=1)
            rm = s[np.arange(s.shape[0]), ra]
            r, c = np.nonzero(s >= thr)
        del s
        # earlier rows first (column maxima), then later ones (row maxima): ties keep the smaller index
        _prefer(best[i0:], arg[i0:], cm, ca.astype(np.int64) + i0)
        _prefer(nns[i0:], nn[i0:], cm, ca.astype(np.int64) + i0)
        _prefer(nns[i0:i1], nn[i0:i1], rm, ra.astype(np.int64) + i0)
        if len(r):
            lr, lc = labels[r + i0], labels[c + i0]
            diff = lr != lc
            if diff.any():
                labels = nfb.connected_components(lr[diff], lc[diff], n)[labels]
    return labels, nn, nns, best, arg


def _identical(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(reps, inverse)``: the first row of each set of bit-identical rows, and each row's set.

    Rows are hashed by their bytes, so a group of 50,000 identical embeddings costs one row in
    the pairwise work instead of 1.25 billion pairs."""
    if not len(x):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    words = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    w = np.random.default_rng(0).integers(1, 2**62, size=words.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    row = np.zeros(len(x), np.uint64)
    for k in range(0, words.shape[1], 64):  # integer arithmetic (exact, wraps mod 2**64), in column slices
        row += (words[:, k : k + 64].astype(np.uint64) * w[k : k + 64]).sum(axis=1, dtype=np.uint64)
    _, first, inverse = np.unique(row, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    # a hash collision between different rows would merge them: check and split those apart
    same = (x == x[first[inverse]]).all(axis=1)
    if not same.all():
        inverse = inverse.copy()
        extra = np.nonzero(~same)[0]
        inverse[extra] = len(first) + np.arange(len(extra))
        first = np.r_[first, extra]
    order = np.argsort(first, kind="stable")  # reps in row order (rows come in rank order)
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    return first[order].astype(np.int64), remap[inverse]


def _spanning_forest(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maximum-similarity spanning forest: same components at every threshold ≥ min(s)."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import minimum_spanning_tree

    if not len(i):
        return i, j, s
    w = 2.0 - s.astype(np.float64)  # > 0: scipy treats zeros as missing edges
    t = minimum_spanning_tree(coo_array((w, (i, j)), shape=(n, n)).tocsr()).tocoo()
    return t.row.astype(np.int64), t.col.astype(np.int64), (2.0 - t.data).astype(np.float32)


def _split(x: np.ndarray, idx: np.ndarray, limit: int, cfg: SemanticConfig, depth: int = 0) -> list[np.ndarray]:
    """Recursive 2-means until every piece has at most ``limit`` rows (positions ``idx`` into x)."""
    if len(idx) <= limit:
        return [idx]
    sub = x[idx]
    lab = None
    if depth < 32:
        c = nfb.kmeans_fit(sub, 2, backend=cfg.backend if cfg.backend != "cuml" else "auto", max_iter=10, seed=cfg.seed + depth)
        lab = _assign(sub, c)
        if min(np.bincount(lab, minlength=2)) < max(1, len(idx) // 100):
            lab = None
    if lab is None:  # degenerate (near-identical rows): cut along a seeded random direction
        proj = sub @ np.random.default_rng(cfg.seed + depth).standard_normal(sub.shape[1]).astype(np.float32)
        lab = np.zeros(len(idx), np.int32)
        lab[np.argsort(proj, kind="stable")[len(idx) // 2 :]] = 1
    return [p for k in (0, 1) for p in _split(x, idx[lab == k], limit, cfg, depth + 1)]


def _distance(x: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Cosine distance of each row to a centroid (one per row, or one for all), in float64.

    Row-wise sums so a row's value does not depend on which other rows share the call."""
    c = np.atleast_2d(np.asarray(centroid, np.float64))
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    return 1.0 - (x.astype(np.float64) * c).sum(axis=1)


def _cluster_pieces(keys: np.ndarray, x: np.ndarray, value: np.ndarray, cfg: SemanticConfig) -> list[np.ndarray]:
    """Row positions of each piece, each in rank order (best first)."""
    key_rank = np.argsort(np.argsort(np.asarray(keys, dtype=object), kind="stable"), kind="stable")
    order = np.lexsort((key_rank, value))  # the policy's order, ties by key (as rank_order)
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys))
    pieces = _split(x, np.arange(len(keys)), cfg.max_cluster_size, cfg) if len(keys) > cfg.max_cluster_size else [order]
    return [p[np.argsort(rank[p], kind="stable")] for p in pieces]


def _rank_values(
    x: np.ndarray, score: np.ndarray | None, centroid: np.ndarray, cfg: SemanticConfig, primary_centroids: np.ndarray | None
) -> np.ndarray:
    need_distance = cfg.policy in ("nearest_centroid", "farthest_centroid")
    distance = _distance(x, centroid if primary_centroids is None else primary_centroids) if need_distance else None
    return rank_value(len(x), policy=cfg.policy, score=score, distance=distance)


def dedup_cluster(
    keys: np.ndarray,
    x: np.ndarray,
    score: np.ndarray | None,
    centroid: np.ndarray,
    cfg: SemanticConfig,
    *,
    primary: np.ndarray | None = None,
    primary_centroids: np.ndarray | None = None,
) -> pd.DataFrame:
    """The duplicates-table rows of one cluster (rows in groups of two or more).

    ``primary`` (bool per row) marks rows whose nearest centroid is this one; the others are
    boundary copies, whose policy distance is taken to ``primary_centroids`` (one per row).
    ``components`` uses every row; ``nemo_curator`` only primary rows. The result also has
    ``rank_value`` (the policy's sort value: lower is better, ties by key), which the
    cross-cluster merge of ``components`` needs.
    """
    thr = 1.0 - cfg.eps
    value = _rank_values(x, score, centroid, cfg, primary_centroids)
    keys = np.asarray(keys, dtype=object)
    rows = np.lexsort((np.argsort(np.argsort(keys, kind="stable"), kind="stable"), value))  # rank order
    if cfg.mode == "nemo_curator" and primary is not None:
        rows = rows[primary[rows]]  # NeMo's hard assignment: boundary copies take no part
    # bit-identical rows are one vector for the pairwise work; each set's best-ranked row stands for it
    reps, inv = _identical(x[rows])
    rep_rows = rows[reps]
    copies = np.bincount(inv, minlength=len(reps))
    out = []
    split = len(rep_rows) > cfg.max_cluster_size  # only distinct vectors count towards the split limit
    for piece in _cluster_pieces(keys[rep_rows], x[rep_rows], value[rep_rows], cfg):
        n = len(piece)
        if n < 2 and copies[piece].sum() < 2:
            continue
        labels, nn, nns, best, arg = link_pass(x[rep_rows[piece]], thr, block_size=cfg.block_size,
                                               similarity=cfg.similarity)
        # every row whose representative is in this piece, in rank order (a representative first)
        at = np.full(len(reps), -1, np.int64)
        at[piece] = np.arange(n)
        mine = np.nonzero(at[inv] >= 0)[0]
        p = at[inv[mine]]  # the piece position of each row's representative
        is_rep = reps[inv[mine]] == mine
        lab = labels[p]
        size = np.bincount(lab, minlength=n)
        member = size[lab] > 1
        if not member.any():
            continue
        mine, p, is_rep, lab = mine[member], p[member], is_rep[member], lab[member]
        src = rows[mine]
        # a representative's own copies: the best-ranked one (rows are in rank order)
        first_copy = np.full(n, -1, np.int64)
        cp = np.nonzero(~is_rep)[0]
        first_copy[p[cp[::-1]]] = src[cp[::-1]]
        rep_src = rep_rows[piece][p]
        if cfg.mode == "components":
            # survivor: the group's best-ranked row, a representative (lowest piece position)
            surv = is_rep & (p == pd.Series(p).groupby(lab).transform("min").to_numpy())
            # a copy is explained by its representative (cosine 1); a representative by its own
            # first copy if it has one, else by its most similar other vector
            has_copy = first_copy[p] >= 0
            other = np.where(nn[p] >= 0, rep_rows[piece][np.maximum(nn[p], 0)], -1)
            matched = np.where(~is_rep, rep_src, np.where(has_copy, first_copy[p], other))
            msim = np.where(is_rep & ~has_copy, nns[p].astype(np.float64), 1.0)
        else:
            # NeMo: a copy's best earlier-ranked row is its representative (cosine 1)
            surv = is_rep & (best[p] < np.float32(thr))
            earlier = np.where(arg[p] >= 0, rep_rows[piece][np.maximum(arg[p], 0)], -1)
            matched = np.where(is_rep, earlier, rep_src)
            msim = np.where(is_rep, best[p].astype(np.float64), 1.0)
            msim[matched < 0] = np.nan
        out.append(
            pd.DataFrame(
                {
                    "key": keys[src],
                    "group_id": group_min_key(lab, keys[src]),
                    "is_survivor": surv,
                    "max_similarity": msim,
                    "matched_key": np.where(matched >= 0, keys[np.maximum(matched, 0)], None),
                    "method": "semantic",
                    "rank_value": value[src],
                }
            )
        )
    table = pd.concat(out, ignore_index=True) if out else empty_dup_table({"rank_value": "float64"})
    table.attrs["split"] = split
    return table


def sweep_cluster(
    keys: np.ndarray,
    x: np.ndarray,
    score: np.ndarray | None,
    centroid: np.ndarray,
    cfg: SemanticConfig,
    eps_values: np.ndarray,
    *,
    primary: np.ndarray | None = None,
    primary_centroids: np.ndarray | None = None,
) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """One cluster's share of :func:`eps_sweep`.

    Returns ``(primary rows, (i, j, sim) maximum-similarity spanning forest of the edges at the
    largest eps, positions into the inputs), removed by nemo_curator at each eps)``. The forest
    keeps every component at every larger threshold; forests of all clusters are merged on the
    key by the caller (boundary copies link clusters), which then counts ``components``.
    """
    thr_min = 1.0 - float(np.max(eps_values))
    thr = (1.0 - eps_values).astype(np.float32)
    prim = np.ones(len(keys), bool) if primary is None else np.asarray(primary, bool)
    value = _rank_values(x, score, centroid, cfg, primary_centroids)
    keys = np.asarray(keys, dtype=object)
    rows = np.lexsort((np.argsort(np.argsort(keys, kind="stable"), kind="stable"), value))  # rank order
    # bit-identical rows: one vector for the pairwise work (as in dedup_cluster); each other row
    # hangs off its set's best-ranked row by a cosine-1 forest edge
    reps, inv = _identical(x[rows])
    rep_rows = rows[reps]
    copy = np.nonzero(reps[inv] != np.arange(len(rows)))[0]
    fi, fj, fs = [rep_rows[inv[copy]]], [rows[copy]], [np.ones(len(copy), np.float32)]
    # NeMo's quantity among primary rows: a primary row with an identical earlier-ranked primary
    # row is removed at every eps; the first primary row of each set (rank ``fp``) compares with
    # the primary rows of other sets ranked before it
    pr = prim[rows]
    fp = np.full(len(reps), len(rows), np.int64)
    np.minimum.at(fp, inv[pr], np.nonzero(pr)[0])
    n_prim = np.bincount(inv[pr], minlength=len(reps))
    rem_n = np.full(len(eps_values), int(np.maximum(n_prim - 1, 0).sum()), np.int64)
    for piece in _cluster_pieces(keys[rep_rows], x[rep_rows], value[rep_rows], cfg):
        i, j, s, _, _ = pair_pass(x[rep_rows[piece]], thr_min, block_size=cfg.block_size, earlier_max=False,
                                  similarity=cfg.similarity)
        a, b, w = _spanning_forest(len(piece), i, j, s)
        fi.append(rep_rows[piece[a]])
        fj.append(rep_rows[piece[b]])
        fs.append(w)
        fa, fb = fp[piece[i]], fp[piece[j]]
        both = (fa < len(rows)) & (fb < len(rows))
        later = np.where(fa < fb, j, i)[both]  # the set whose first primary row comes later
        best = np.full(len(piece), -np.inf, np.float32)
        np.maximum.at(best, later, s[both])
        rem_n += (best[None, :] >= thr[:, None]).sum(axis=1)
    forest = (_cat(fi, np.int64), _cat(fj, np.int64), _cat(fs, np.float32))
    return int(prim.sum()), forest, rem_n


# --------------------------------------------------------------------------- driver
def _as_dask(df: Any) -> Any:
    import dask.dataframe as dd

    if hasattr(df, "to_delayed"):
        return df
    return dd.from_pandas(df, npartitions=max(1, math.ceil(len(df) / 100_000)), sort=False)


def _check_columns(df: Any, cfg: SemanticConfig, stage: str) -> None:
    need = [KEY, cfg.embedding_column] + ([cfg.score_column] if cfg.score_column else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(
            f"{stage}: input is missing column(s) {missing}; found {list(df.columns)}. "
            "Embeddings come from the scoring pass (list<float32> column 'embedding')."
        )


@dataclass
class _Clustering:
    root: Path  # the assign stage directory (bucket files)
    centroids: np.ndarray
    sizes: np.ndarray
    n_buckets: int
    n_rows: int
    excluded: int
    boundary_rows: int
    assign_hash: str
    timings: dict[str, float]


def _cluster(df: Any, cfg: SemanticConfig, root: Path, stage: str) -> _Clustering:
    import dask

    _check_columns(df, cfg, stage)
    check_unique_keys(df, stage=stage)  # repeated keys would be merged or reindexed wrongly below
    ddf = _as_dask(df)
    fit_cfg = {
        k: v for k, v in asdict(cfg).items()
        if k in ("n_clusters", "sample_fraction", "max_fit_rows", "backend", "max_iter", "seed", "embedding_column")
    }
    fit = Checkpoint(root, "fit", fit_cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if fit.is_done("centroids"):
        info = fit.read_done("centroids")
        centroids = np.load(fit.path("centroids", ".npy"))
        n_rows, excluded = info["rows"], info["excluded"]
    else:
        parts = [dask.delayed(_sample_part)(p, cfg) for p in ddf.to_delayed()]
        merge = dask.delayed(_merge_samples)
        while len(parts) > 1:
            parts = [merge(parts[k], parts[k + 1], cfg.max_fit_rows) if k + 1 < len(parts) else parts[k] for k in range(0, len(parts), 2)]
        n_rows, excluded, h, x = dask.compute(parts[0])[0]
        if n_rows == 0:
            raise ValueError(f"{stage}: no rows with nf_status == 'ok' and a non-zero embedding to deduplicate")
        x = x[np.argsort(h, kind="stable")]  # a fixed order: the fit must not depend on partitioning
        timings["sample_s"] = time.perf_counter() - t0
        k = cfg.n_clusters or math.ceil(n_rows / ROWS_PER_CLUSTER)
        k = max(1, min(int(k), len(x)))
        centroids = np.asarray(nfb.to_host(_fit(ddf, x, k, cfg)), np.float32)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        centroids = _distinct_centroids(centroids)
        fit.write_npy_atomic(centroids, "centroids")
        fit.mark_done("centroids", {"rows": int(n_rows), "excluded": int(excluded), "k": len(centroids), "fit_rows": len(x)})
    timings["fit_s"] = time.perf_counter() - t0 - timings.get("sample_s", 0.0)
    t0 = time.perf_counter()
    n_buckets = max(1, min(len(centroids), math.ceil(n_rows / ROWS_PER_BUCKET)))
    assign_cfg = {"fit": fit.hash, "centroids": hashlib.sha256(centroids.tobytes()).hexdigest()[:16],
                  "npartitions": ddf.npartitions, "n_buckets": n_buckets, "score_column": cfg.score_column,
                  "boundary_margin": cfg.boundary_margin, "boundary_radius": _radius(cfg)}
    # the boundary allowance depends on eps when scaled: eps_sweep (largest eps) and the dedup
    # then keep their assignments side by side in one work directory, sharing the fit
    stage = "assign" if _radius(cfg) == 0 else f"assign-r{_radius(cfg):.6g}"
    ck = Checkpoint(root, stage, assign_cfg)
    cent = dask.delayed(centroids)
    tasks = [dask.delayed(_assign_part)(p, i, cent, n_buckets, ck, cfg) for i, p in enumerate(ddf.to_delayed())]
    infos = dask.compute(*tasks)
    sizes = np.zeros(len(centroids), np.int64)
    for info in infos:
        for c, v in info["counts"].items():
            sizes[int(c)] += v
    timings["assign_s"] = time.perf_counter() - t0
    boundary = sum(int(info.get("boundary", 0)) for info in infos)
    return _Clustering(ck.dir, centroids, sizes, n_buckets, int(sizes.sum()) - boundary, int(excluded), boundary, ck.hash,
                       timings)


def _distinct_centroids(c: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Drop centroids within ``tol`` cosine of an earlier one.

    k-means on many identical rows returns k copies of one point (up to float noise); every row
    would then tie between all of them and be copied to each as a boundary copy."""
    dup = np.zeros(len(c), bool)
    for i0 in range(0, len(c), 1024):
        s = c[i0 : i0 + 1024] @ c[: i0 + 1024].T  # each row against the rows before it
        s[np.arange(s.shape[1])[None, :] >= (i0 + np.arange(len(s)))[:, None]] = -1.0
        dup[i0 : i0 + 1024] = (s >= 1.0 - tol).any(axis=1)
    return np.ascontiguousarray(c[~dup])


def _fit(ddf: Any, x: np.ndarray, k: int, cfg: SemanticConfig) -> Any:
    """k-means centroids: cuML on a GPU frame (multi-GPU with a Dask client), else faiss / sklearn."""
    on_gpu = nfb.frame_backend(ddf) == "cudf" and nfb.has_module("cuml")
    if cfg.backend == "cuml" or (cfg.backend == "auto" and on_gpu):
        client = None
        with contextlib.suppress(ImportError, ValueError):
            from distributed import default_client

            client = default_client()
        if client is not None and nfb.frame_backend(ddf) == "cudf":
            ok = ddf[ddf[STATUS] == Status.OK.value] if STATUS in ddf.columns else ddf
            ok = ok[ok[cfg.embedding_column].notna()]
            return nfb.kmeans_fit_dask_cudf(ok, cfg.embedding_column, k, max_iter=cfg.max_iter, seed=cfg.seed, client=client)
        return nfb.kmeans_fit(nfb.to_gpu(x), k, max_iter=cfg.max_iter, seed=cfg.seed)
    return nfb.kmeans_fit(x, k, backend=cfg.backend, max_iter=cfg.max_iter, seed=cfg.seed)


@dataclass
class _Bucket:
    """The rows of some clusters, sorted by (cluster, key): independent of partitioning."""

    keys: np.ndarray
    cid: np.ndarray
    primary: np.ndarray  # each row's nearest cluster (== cid except for boundary copies)
    x: np.ndarray
    score: np.ndarray | None

    def cluster(self, sl: slice, centroids: np.ndarray) -> dict[str, Any]:
        prim = self.primary[sl]
        return {"keys": self.keys[sl], "x": self.x[sl], "score": None if self.score is None else self.score[sl],
                "primary": prim == self.cid[sl], "primary_centroids": centroids[prim]}


def _read_bucket(assign_dir: Path, b: int, clusters: Sequence[int]) -> _Bucket:
    files = sorted((assign_dir / f"bucket-{b:05d}").glob("part-*.parquet"))
    want = pa.array(np.asarray(clusters, dtype=np.int32))
    # Each file is cut down to the wanted clusters as it is read: a bucket holds every boundary copy
    # of its clusters (up to BOUNDARY_CANDIDATES per row, more with more clusters), and the sweep
    # wants a few clusters of it, so holding the whole bucket made worker memory grow with N.
    parts = []
    for f in files:
        t = pq.read_table(f)
        t = t.filter(pc.is_in(t["cluster_id"], value_set=want))
        if t.num_rows:
            parts.append(t)
    if not parts:
        z = np.zeros(0, np.int32)
        return _Bucket(np.zeros(0, object), z, z, np.zeros((0, 0), np.float32), None)
    table = pa.concat_tables(parts)
    del parts
    cid = table["cluster_id"].to_numpy()
    keys = table["key"].to_numpy(zero_copy_only=False)
    order = np.lexsort((keys.astype(str), cid))  # by cluster, then key: independent of partitioning
    # One gather in Arrow, whose values are then viewed, not copied again.
    table = table.take(pa.array(order)).combine_chunks()
    emb = table["embedding"].chunk(0)
    x = emb.flatten().to_numpy().reshape(-1, emb.type.list_size)
    score = table["score"].to_numpy() if "score" in table.column_names else None
    return _Bucket(keys[order], cid[order], table["primary_cluster"].to_numpy(), np.ascontiguousarray(x), score)


def _read_groups(clusters: Sequence[int], sizes: np.ndarray, limit: int | None = None) -> list[list[int]]:
    """``clusters`` (in order) cut into runs of at most ``limit`` rows (boundary copies included).

    A bucket has ROWS_PER_BUCKET rows in their nearest cluster, but each row may also be copied to
    several others; reading a bucket a run at a time keeps a task's memory at ``limit`` rows
    (or one cluster) whatever the number of copies."""
    limit = READ_ROWS if limit is None else limit
    groups: list[list[int]] = []
    n = 0
    for c in clusters:
        s = int(sizes[c])
        if not groups or n + s > limit:
            groups.append([])
            n = 0
        groups[-1].append(c)
        n += s
    return groups


def _by_cluster(cid: np.ndarray) -> list[tuple[int, slice]]:
    if not len(cid):
        return []
    starts = np.r_[0, np.nonzero(np.diff(cid))[0] + 1]
    ends = np.r_[starts[1:], len(cid)]
    return [(int(cid[s]), slice(int(s), int(e))) for s, e in zip(starts, ends, strict=True)]


def _pairs_bucket(b: int, clusters: list[int], cl: _Clustering, ck: Checkpoint, cfg: SemanticConfig) -> list[dict]:
    todo = [c for c in clusters if not ck.is_done(f"cluster-{c:06d}")]
    stats = [ck.read_done(f"cluster-{c:06d}") for c in clusters if c not in set(todo)]
    if not todo:
        return stats
    for group in _read_groups(todo, cl.sizes):
        bk = _read_bucket(cl.root, b, group)
        for c, sl in _by_cluster(bk.cid):
            part = bk.cluster(sl, cl.centroids)
            t = dedup_cluster(part["keys"], part["x"], part["score"], cl.centroids[c], cfg, primary=part["primary"],
                              primary_centroids=part["primary_centroids"])
            split = bool(t.attrs.get("split", sl.stop - sl.start > cfg.max_cluster_size))
            # cluster_id is the row's primary cluster, also for a boundary copy found here
            prim = pd.Series(bk.primary[sl], index=pd.Index(part["keys"], dtype=object))
            t = t.assign(cluster_id=prim.reindex(pd.Index(t["key"], dtype=object)).to_numpy(np.int32))
            for col, dt in DUP_DTYPES.items():
                t[col] = t[col].astype(dt)
            ck.write_parquet_atomic(t, f"cluster-{c:06d}")
            n = sl.stop - sl.start
            info = {"cluster": c, "rows": n, "boundary": int(n - part["primary"].sum()), "in_groups": len(t),
                    "split": split}
            ck.mark_done(f"cluster-{c:06d}", info)
            stats.append(info)
        del bk
    return stats


def _merge_clusters(table: pd.DataFrame) -> pd.DataFrame:
    """``components`` across clusters: one group per connected set of per-cluster groups.

    A row in two clusters (a boundary copy) links the groups it belongs to in each. Per row:
    the most similar neighbour over all its clusters (ties: the best-ranked neighbour); per
    group: the smallest key as ``group_id`` and the best-ranked row (``rank_value``, then key)
    as survivor: the same rule as inside one cluster.
    """
    if not len(table):
        return table.drop(columns="rank_value")
    t = table.reset_index(drop=True)
    keys = t["key"].to_numpy(dtype=object)
    codes, uniq = pd.factorize(np.concatenate([keys, t["group_id"].to_numpy(dtype=object)]))
    labels = nfb.connected_components(codes[: len(t)], codes[len(t) :], len(uniq))
    # a row's rank value is computed against its primary centroid, so all its copies agree
    value = t.groupby("key", sort=False)["rank_value"].first()
    t = t.assign(
        _label=labels[codes[: len(t)]],
        _neg=-t["max_similarity"].to_numpy(np.float64),
        _nrank=value.reindex(t["matched_key"]).to_numpy(np.float64),
        _mkey=t["matched_key"].astype(object),
        _key=t["key"].astype(object),
    )
    t = t.sort_values(["_key", "_neg", "_nrank", "_mkey"], kind="stable").drop_duplicates("_key", keep="first")
    best = t.sort_values(["_label", "rank_value", "_key"], kind="stable").drop_duplicates("_label", keep="first")
    t["is_survivor"] = t["_key"].isin(set(best["_key"]))
    t["group_id"] = group_min_key(t["_label"].to_numpy(), t["_key"].to_numpy())
    return t.drop(columns=["_label", "_neg", "_nrank", "_mkey", "_key", "rank_value"]).reset_index(drop=True)


def _forest_removals(edges: pd.DataFrame, eps_values: np.ndarray) -> np.ndarray:
    """Rows removed by ``components`` at each eps, from the union of per-cluster forests.

    Clusters overlap through boundary copies, so the same pair can come from two clusters:
    keep it once (scipy would add the weights of repeated entries), then one global
    maximum-similarity forest; each of its edges at ≥ a threshold merges two groups."""
    if not len(edges):
        return np.zeros(len(eps_values), np.int64)
    a = edges["a"].to_numpy(dtype=object)
    b = edges["b"].to_numpy(dtype=object)
    codes, uniq = pd.factorize(np.concatenate([a, b]))
    u, v = codes[: len(a)], codes[len(a) :]
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    e = pd.DataFrame({"lo": lo, "hi": hi, "s": edges["s"].to_numpy(np.float32)}).groupby(["lo", "hi"], sort=True)["s"].max()
    lo_, hi_ = e.index.get_level_values(0).to_numpy(np.int64), e.index.get_level_values(1).to_numpy(np.int64)
    _, _, fs = _spanning_forest(len(uniq), lo_, hi_, e.to_numpy(np.float32))
    thr = (1.0 - eps_values).astype(np.float32)
    return (fs[None, :] >= thr[:, None]).sum(axis=1).astype(np.int64)


@contextlib.contextmanager
def _workdir(checkpoint_dir: str | Path | None) -> Any:
    if checkpoint_dir is not None:
        yield Path(checkpoint_dir)
        return
    tmp = tempfile.mkdtemp(prefix="nf-semdedup-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def semantic_duplicates(
    df: Any,
    *,
    eps: float = 0.01,
    n_clusters: int | None = None,
    sample_fraction: float = 1.0,
    policy: Policy = "farthest_centroid",
    score_column: str | None = None,
    mode: Mode = "components",
    max_cluster_size: int = 20_000,
    checkpoint_dir: str | Path | None = None,
    backend: nfb.KMeansBackend = "auto",
    max_fit_rows: int = 200_000,
    max_iter: int = 20,
    seed: int = 0,
    block_size: int = 1024,
    similarity: Similarity = "auto",
    embedding_column: str = EMBEDDING,
    boundary_margin: float | None = None,
    boundary_scale: float | None = None,
) -> pd.DataFrame:
    """Near-duplicate groups by cosine similarity of embeddings, within k-means clusters.

    Parameters
    ----------
    df : pandas or Dask DataFrame
        With ``key`` and ``embedding`` (``list<float32>``, one length for all rows: checked);
        only ``nf_status == 'ok'`` rows with a finite, non-zero embedding take part
        (embeddings are L2-normalised here; :func:`mark_invalid_embeddings` records the
        others in the ledger). Bit-identical embeddings count once for the pairwise work.
    eps : float
        Rows are near-duplicates when cosine similarity ``≥ 1 − eps`` (larger eps removes more).
        Choose it with :func:`eps_sweep`.
    n_clusters : int, optional
        k for k-means; default ``ceil(rows / 1000)``. Cost is ``O(rows × cluster size)``.
    sample_fraction : float
        Fit k-means on this fraction of rows (by key hash), at most ``max_fit_rows``; every row
        is then assigned.
    policy : {"farthest_centroid", "nearest_centroid", "max_score", "smallest_key"}
        Which row of a group survives (ties: smallest key). ``farthest_centroid`` is NeMo
        Curator's and SemDeDup's default ("hard").
    score_column : str, optional
        Numeric column for ``policy='max_score'`` (e.g. ``aesthetic_score``).
    mode : {"components", "nemo_curator"}
        The grouping rule (module docstring).
    max_cluster_size : int
        Larger clusters (boundary copies included) are split by recursive 2-means (pairs across
        a split are not found).
    checkpoint_dir : str or Path, optional
        Keep intermediates here and resume from them; a temporary directory otherwise. For a
        multi-node cluster it must be shared storage. It belongs to one input table: resuming
        with other rows (keys, embeddings or scores) raises instead of reusing stale clusters.
    backend : {"auto", "faiss", "sklearn", "cuml"}
        k-means implementation.
    max_fit_rows, max_iter, seed : int
        k-means sample cap, Lloyd iterations, seed.
    block_size : int
        Rows per similarity block (memory ``4 · block_size · cluster size`` bytes).
    similarity : {"auto", "numpy", "torch"}
        Matrix engine for the similarity blocks; ``auto`` = torch on a GPU when present, else numpy.
    embedding_column : str
        Name of the embedding column.
    boundary_margin, boundary_scale : float, optional
        Boundary copies: a row is also compared inside each of its 8 next-nearest clusters ``j``
        whose cosine is within ``boundary_margin + boundary_scale·√(2·eps)·‖c_nearest − c_j‖``
        of its nearest, so near-duplicates split by a k-means boundary are found; groups are
        then merged across clusters. ``boundary_scale`` 0.5 is sound (every pair within eps
        meets in a cluster, docs/operators/dedup.md); the default for ``components`` is
        ``boundary_scale=0.25`` (anisotropic planted benchmark: recall 0.959 hard → 1.000 for
        +18% rows at 50k) and no copies for ``nemo_curator``, which ignores them in any case
        (NeMo's hard assignment). Passing only ``boundary_margin`` (the fixed cosine gap of
        earlier versions) turns the scale off; both ``0`` turn copies off.

    Returns
    -------
    DataFrame
        The duplicates table plus ``cluster_id`` (the row's nearest cluster). ``components``: ``matched_key`` is the row's
        most similar group member, ``max_similarity`` that cosine. ``nemo_curator``: the
        most similar *earlier-ranked* row (NeMo's ``max_id`` / ``cosine_sim_score``), NaN for
        the first row of a cluster. ``attrs`` holds ``n_rows``, ``n_clusters``,
        ``split_clusters``, ``excluded`` rows, ``boundary_rows`` (copies placed in a second
        cluster), ``boundary_margin`` and per-pass ``timings``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from nemo_frames.backend import from_matrix
    >>> x = np.eye(4, 8, dtype=np.float32); x[1] = x[0] + 0.01
    >>> df = pd.DataFrame({"key": list("abcd")}).assign(embedding=from_matrix(x))
    >>> t = semantic_duplicates(df, eps=0.01, n_clusters=1, policy="smallest_key")
    >>> t[["key", "is_survivor", "matched_key"]].values.tolist()
    [['a', True, 'b'], ['b', False, 'a']]
    """
    margin, scale = _resolve_boundary(boundary_margin, boundary_scale, mode)
    cfg = SemanticConfig(
        eps=float(eps), n_clusters=n_clusters, sample_fraction=float(sample_fraction), max_fit_rows=int(max_fit_rows),
        policy=policy, score_column=score_column, mode=mode, max_cluster_size=int(max_cluster_size), backend=backend,
        max_iter=int(max_iter), seed=int(seed), block_size=int(block_size), similarity=similarity,
        embedding_column=embedding_column,
        boundary_margin=margin, boundary_scale=scale,
    )
    cfg.validate()
    import dask

    with _workdir(checkpoint_dir) as root:
        cl = _cluster(df, cfg, root, "semantic_duplicates")
        pairs_cfg = {"assign": cl.assign_hash, **{k: v for k, v in asdict(cfg).items() if k in (
            "eps", "policy", "score_column", "mode", "max_cluster_size", "block_size", "seed")}}
        ck = Checkpoint(root, "pairs", pairs_cfg)
        t0 = time.perf_counter()
        nonempty = np.nonzero(cl.sizes)[0]
        tasks = [
            dask.delayed(_pairs_bucket)(b, [int(c) for c in nonempty if c % cl.n_buckets == b], cl, ck, cfg)
            for b in range(cl.n_buckets)
        ]
        stats = [s for part in dask.compute(*tasks) for s in part]
        files = [ck.path(f"cluster-{int(c):06d}") for c in nonempty]
        tables = [pq.read_table(f).to_pandas() for f in files]
        tables = [t for t in tables if len(t)]
        cl.timings["pairs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = pd.concat(tables, ignore_index=True) if tables else empty_dup_table({"cluster_id": "int32", "rank_value": "float64"})
    table = _merge_clusters(table) if cfg.mode == "components" else table.drop(columns="rank_value")
    cl.timings["merge_s"] = time.perf_counter() - t0
    attrs = {
        "n_clusters": len(cl.centroids),
        "split_clusters": int(sum(s["split"] for s in stats)),
        "excluded": cl.excluded,
        "boundary_rows": cl.boundary_rows,
        "boundary_margin": cfg.boundary_margin,
        "boundary_scale": cfg.boundary_scale,
        "eps": cfg.eps,
        "mode": cfg.mode,
        "policy": cfg.policy,
        "timings": {k: round(v, 3) for k, v in cl.timings.items()},
    }
    return finish_dup_table(table, n_rows=cl.n_rows, method="semantic", **attrs)


def eps_sweep(
    df: Any,
    eps_values: Sequence[float] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1),
    *,
    sample_clusters: int | None = 100,
    n_clusters: int | None = None,
    sample_fraction: float = 1.0,
    policy: Policy = "farthest_centroid",
    score_column: str | None = None,
    max_cluster_size: int = 20_000,
    checkpoint_dir: str | Path | None = None,
    backend: nfb.KMeansBackend = "auto",
    max_fit_rows: int = 200_000,
    max_iter: int = 20,
    seed: int = 0,
    block_size: int = 1024,
    similarity: Similarity = "auto",
    embedding_column: str = EMBEDDING,
    boundary_margin: float | None = None,
    boundary_scale: float | None = None,
) -> pd.DataFrame:
    """Fraction of rows semantic dedup would remove at each eps, on a sample of clusters.

    The clustering is the same as :func:`semantic_duplicates` with the same settings (and is
    reused from ``checkpoint_dir``); one similarity pass per sampled cluster at the largest eps
    gives every smaller eps: a maximum spanning forest of the edges for ``components`` (each
    forest edge above a threshold removes one row; forests of all clusters are merged on the
    key, since boundary copies link clusters) and the earlier-ranked maximum among primary
    rows for ``nemo_curator``. ``boundary_margin`` / ``boundary_scale`` default to the
    ``components`` values.

    Parameters
    ----------
    eps_values : sequence of float
        Values to evaluate.
    sample_clusters : int or None
        How many non-empty clusters to evaluate (seeded choice); ``None`` = all.
    Other parameters
        As in :func:`semantic_duplicates`.

    Returns
    -------
    DataFrame
        ``eps``, ``similarity_threshold``, ``rows`` (in the sampled clusters),
        ``removed_components``, ``removed_nemo_curator`` and the two ``fraction_removed_*``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from nemo_frames.backend import from_matrix
    >>> x = np.eye(4, 8, dtype=np.float32); x[1] = x[0] + 0.01
    >>> df = pd.DataFrame({"key": list("abcd")}).assign(embedding=from_matrix(x))
    >>> eps_sweep(df, [0.00001, 0.01], n_clusters=1)["removed_components"].tolist()
    [0, 1]
    """
    eps_arr = np.asarray(sorted(float(e) for e in eps_values), dtype=np.float64)
    margin, scale = _resolve_boundary(boundary_margin, boundary_scale, "components")
    cfg = SemanticConfig(
        eps=float(eps_arr.max()), n_clusters=n_clusters, sample_fraction=float(sample_fraction),
        max_fit_rows=int(max_fit_rows), policy=policy, score_column=score_column, max_cluster_size=int(max_cluster_size),
        backend=backend, max_iter=int(max_iter), seed=int(seed), block_size=int(block_size), similarity=similarity,
        embedding_column=embedding_column,
        boundary_margin=margin, boundary_scale=scale,
    )
    cfg.validate()
    import dask

    with _workdir(checkpoint_dir) as root:
        cl = _cluster(df, cfg, root, "eps_sweep")
        nonempty = np.nonzero(cl.sizes)[0]
        if sample_clusters is not None and sample_clusters < len(nonempty):
            nonempty = np.sort(np.random.default_rng(seed).choice(nonempty, sample_clusters, replace=False))

        sampled = set(int(c) for c in nonempty)

        def run(b: int, clusters: list[int]) -> tuple[int, pd.DataFrame, np.ndarray]:
            rows, rn, forests = 0, np.zeros(len(eps_arr), np.int64), []
            for group in _read_groups(clusters, cl.sizes):
                bk = _read_bucket(cl.root, b, group)
                for c, sl in _by_cluster(bk.cid):
                    part = bk.cluster(sl, cl.centroids)
                    r, (i, j, s), n_ = sweep_cluster(part["keys"], part["x"], part["score"], cl.centroids[c], cfg,
                                                     eps_arr, primary=part["primary"],
                                                     primary_centroids=part["primary_centroids"])
                    # only rows counted in `rows` (primary in a sampled cluster) may be removed
                    prim = bk.primary[sl]
                    ok = np.isin(prim[i], list(sampled)) & np.isin(prim[j], list(sampled))
                    forests.append(pd.DataFrame({"a": part["keys"][i[ok]], "b": part["keys"][j[ok]], "s": s[ok]}))
                    rows, rn = rows + r, rn + n_
                del bk
            return rows, pd.concat(forests, ignore_index=True) if forests else pd.DataFrame({"a": [], "b": [], "s": []}), rn

        tasks = [dask.delayed(run)(b, [int(c) for c in nonempty if c % cl.n_buckets == b]) for b in range(cl.n_buckets)]
        results = dask.compute(*tasks)
    rows = sum(r[0] for r in results)
    rn = sum((r[2] for r in results), np.zeros(len(eps_arr), np.int64))
    rc = _forest_removals(pd.concat([r[1] for r in results], ignore_index=True), eps_arr)
    return pd.DataFrame(
        {
            "eps": eps_arr,
            "similarity_threshold": 1.0 - eps_arr,
            "rows": rows,
            "removed_components": rc,
            "removed_nemo_curator": rn,
            "fraction_removed_components": rc / max(rows, 1),
            "fraction_removed_nemo_curator": rn / max(rows, 1),
        }
    )
