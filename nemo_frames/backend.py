"""Everything backend-specific: pandas/numpy on CPU, cuDF/CuPy on GPU.

No other module imports cudf, cupy, cuml, cugraph or nvidia.dali at top level.
GPU implementations register lazily, the first time a cuDF object is seen, so
``import nemo_frames`` stays light and works on machines without RAPIDS.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dask.utils import Dispatch

from nemo_frames.schema import EMBEDDING_TYPE

Backend = Literal["pandas", "cudf"]

to_matrix = Dispatch("nf_to_matrix")
from_matrix = Dispatch("nf_from_matrix")


@to_matrix.register(pd.Series)
def _to_matrix_pandas(s: pd.Series, dim: int | None = None) -> np.ndarray:
    """A ``list<float32>`` Series as a C-contiguous float32 (n, d) array."""
    if len(s) == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    arr = pa.array(s, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise ValueError(
            f"column {s.name!r}: {arr.null_count} of {len(s)} rows have no embedding; "
            "select rows with nf_status == 'ok' (or drop nulls) before converting to a matrix"
        )
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise TypeError(f"column {s.name!r}: expected list<float32>, found {arr.type}")
    n = len(s)
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    else:
        # every row's own length: a total that happens to divide evenly must not be reshaped
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0])
        bad = np.nonzero(lengths != width)[0]
        if len(bad) or (dim is not None and width != dim):
            _raise_lengths(s.name, lengths, dim)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    out = flat.reshape(n, width)
    if dim is not None and out.shape[1] != dim:
        raise ValueError(f"column {s.name!r}: expected dimension {dim}, found {out.shape[1]}")
    return np.ascontiguousarray(out)


def _raise_lengths(name: Any, lengths: np.ndarray, dim: int | None) -> None:
    """Name the column, the expected length and the rows that differ (with their lengths)."""
    vals, counts = np.unique(lengths, return_counts=True)
    expected = int(dim) if dim is not None else int(vals[np.argmax(counts)])
    bad = np.nonzero(lengths != expected)[0]
    found = ", ".join(f"{int(v)} ({int(c)} rows)" for v, c in zip(vals, counts, strict=True) if v != expected)
    raise ValueError(
        f"column {name!r}: every embedding must have the same length; expected {expected}, found {found} "
        f"(first bad row position {int(bad[0])}). Fix: recompute those embeddings with one model, or mark "
        "the odd rows as errors (nf_status = 'error') before semantic dedup."
    )


@from_matrix.register(np.ndarray)
def _from_matrix_numpy(
    x: np.ndarray, index: Any = None, name: str | None = None, valid: np.ndarray | None = None
) -> pd.Series:
    """A float (n, d) array as a ``list<float32>`` pandas Series.

    ``valid`` (bool, length n+k) spreads the n rows of ``x`` over the True slots and
    leaves nulls in the False ones (rows that errored before embedding).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, found shape {x.shape}")
    n, d = x.shape
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if int(valid.sum()) != n:
            raise ValueError(f"valid has {int(valid.sum())} True slots for {n} rows")
        lengths = np.where(valid, d, 0).astype(np.int32)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        arr = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()), mask=pa.array(~valid))
        return pd.Series(arr, dtype=pd.ArrowDtype(EMBEDDING_TYPE), index=index, name=name)
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)) if n else pa.array([0], pa.int32())
    arr = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))
    return pd.Series(arr, dtype=pd.ArrowDtype(EMBEDDING_TYPE), index=index, name=name)


@to_matrix.register_lazy("cudf")
def _register_cudf_to_matrix() -> None:
    import cudf

    @to_matrix.register(cudf.Series)
    def _to_matrix_cudf(s: Any, dim: int | None = None) -> Any:
        if s.null_count:
            raise ValueError(f"column {s.name!r}: {s.null_count} rows have no embedding")
        lengths = s.list.len().values
        if len(s) and bool((lengths != lengths[0]).any()):
            _raise_lengths(s.name, lengths.get(), dim)
        out = s.list.leaves.values.reshape(len(s), -1)
        if dim is not None and out.shape[1] != dim:
            raise ValueError(f"column {s.name!r}: expected dimension {dim}, found {out.shape[1]}")
        return out


@from_matrix.register_lazy("cupy")
def _register_cupy_from_matrix() -> None:
    import cupy

    @from_matrix.register(cupy.ndarray)
    def _from_matrix_cupy(x: Any, index: Any = None, name: str | None = None) -> Any:
        import cudf
        import pylibcudf as plc

        x = cupy.ascontiguousarray(x, dtype=cupy.float32)
        col = plc.Column.from_cuda_array_interface(x)
        s = cudf.Series.from_pylibcudf(col, metadata={"index": index} if index is not None else None)
        s.name = name
        return s


def array_module(x: Any) -> Any:
    """numpy or cupy, whichever owns ``x``."""
    if type(x).__module__.startswith("cupy"):
        return importlib.import_module("cupy")
    return np


def frame_backend(df: Any) -> Backend:
    """``"cudf"`` for cuDF frames/series (and Dask collections of them), else ``"pandas"``."""
    meta = getattr(df, "_meta", df)
    return "cudf" if type(meta).__module__.startswith("cudf") else "pandas"


def has_module(name: str) -> bool:
    """Whether ``name`` is importable, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def gpu_available() -> bool:
    """Whether a CUDA device is usable by torch (imports torch lazily)."""
    if not has_module("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional dependency {module!r}, which is not installed. "
            f"Install it with: uv pip install 'nemo-frames[{extra}]'"
        ) from exc


# --------------------------------------------------------------------------- dedup: k-means, components
KMeansBackend = Literal["auto", "faiss", "sklearn", "cuml"]
kmeans_fit = Dispatch("nf_kmeans_fit")
connected_components = Dispatch("nf_connected_components")


def to_gpu(x: Any) -> Any:
    """A CuPy array for a numpy array (the GPU k-means input)."""
    cupy = require("cupy", "gpu", "GPU arrays")
    return cupy.asarray(x)


def to_host(x: Any) -> Any:
    """A numpy array / pandas object for a CuPy array / cuDF object (identity on CPU objects)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if type(x).__module__.startswith("cudf"):
        return x.to_pandas()
    return x


@kmeans_fit.register(np.ndarray)
def _kmeans_fit_numpy(
    x: np.ndarray, n_clusters: int, *, backend: KMeansBackend = "auto", max_iter: int = 20, seed: int = 0
) -> np.ndarray:
    """Centroids ``(k, d)`` float32 of k-means on the rows of ``x`` (float32, ideally unit-norm).

    ``auto`` uses faiss when installed (measured faster here: ``benchmarks/kmeans_backends.py``),
    else scikit-learn. Both start from a seeded random init and run ``max_iter`` Lloyd steps.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if backend == "cuml":
        raise ValueError("backend='cuml' needs the embeddings on the GPU (a cuDF / Dask-cuDF frame)")
    if backend == "auto":
        backend = "faiss" if has_module("faiss") else "sklearn"
    if backend == "faiss":
        faiss = require("faiss", "faiss", "k-means with backend='faiss'")
        km = faiss.Kmeans(
            x.shape[1], int(n_clusters), niter=int(max_iter), seed=int(seed), spherical=True,
            max_points_per_centroid=max(1, len(x)), min_points_per_centroid=1, verbose=False,
        )
        km.train(x)
        return np.asarray(km.centroids, dtype=np.float32)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=int(n_clusters), init="random", n_init=1, max_iter=int(max_iter), random_state=int(seed))
        return np.asarray(km.fit(x).cluster_centers_, dtype=np.float32)
    raise ValueError(f"k-means backend must be 'auto', 'faiss', 'sklearn' or 'cuml', found {backend!r}")


@kmeans_fit.register_lazy("cupy")
def _register_cupy_kmeans() -> None:
    import cupy

    @kmeans_fit.register(cupy.ndarray)
    def _kmeans_fit_cuml(x: Any, n_clusters: int, *, backend: str = "auto", max_iter: int = 20, seed: int = 0) -> Any:
        # Single GPU: cuml.cluster.KMeans(n_clusters, max_iter, random_state, init) → cluster_centers_.
        cuml_cluster = require("cuml.cluster", "gpu", "GPU k-means")
        km = cuml_cluster.KMeans(
            n_clusters=int(n_clusters), max_iter=int(max_iter), random_state=int(seed), init="scalable-k-means++", n_init=1
        )
        km.fit(x)
        return cupy.asarray(km.cluster_centers_, dtype=cupy.float32)


def kmeans_fit_dask_cudf(ddf: Any, column: str, n_clusters: int, *, max_iter: int = 20, seed: int = 0, client: Any = None) -> Any:
    """Multi-GPU k-means (``cuml.dask.cluster.KMeans``) on a Dask-cuDF frame's list column.

    Thin adapter over the documented API: the list column becomes a CuPy-backed Dask array
    (``map_partitions`` + ``compute_chunk_sizes``), only centroids travel between GPUs.
    Returns the centroids as a CuPy array.
    """
    import cupy

    kmeans_mod = require("cuml.dask.cluster", "gpu", "multi-GPU k-means")

    def unit_rows(s: Any) -> Any:
        m = to_matrix(s)
        return m / cupy.maximum(cupy.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    darr = ddf[column].map_partitions(unit_rows, meta=cupy.empty((0, 0), dtype=cupy.float32))
    darr = darr.to_dask_array() if hasattr(darr, "to_dask_array") else darr
    darr.compute_chunk_sizes()
    km = kmeans_mod.KMeans(client=client, n_clusters=int(n_clusters), max_iter=int(max_iter), random_state=int(seed))
    km.fit(darr)
    return cupy.asarray(km.cluster_centers_, dtype=cupy.float32)


@connected_components.register(np.ndarray)
def _components_scipy(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Component label per node ``0..n-1`` of the undirected graph with edges ``src[i]–dst[i]``."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components as cc

    # float weights: repeated edges are summed, and 256 repeats of an int8 1 would wrap to a 0 (no edge)
    graph = coo_array((np.ones(len(src), np.float32), (src, dst)), shape=(n, n)).tocsr()
    return cc(graph, directed=False, connection="weak", return_labels=True)[1]


@connected_components.register_lazy("cupy")
def _register_cugraph_components() -> None:
    import cupy

    @connected_components.register(cupy.ndarray)
    def _components_cugraph(src: Any, dst: Any, n: int) -> Any:
        # cuGraph mirrors SciPy for a CuPy sparse matrix: (n_components, labels).
        cugraph = require("cugraph", "gpu", "GPU connected components")
        from cupyx.scipy.sparse import coo_matrix

        graph = coo_matrix((cupy.ones(len(src), cupy.float32), (src, dst)), shape=(n, n)).tocsr()
        return cugraph.connected_components(graph, directed=False, connection="weak", return_labels=True)[1]


def cuda_device_present() -> bool:
    """Cheap check for an NVIDIA device (no torch import): driver files, then torch if they exist."""
    import os

    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")):
        return False
    return gpu_available()
