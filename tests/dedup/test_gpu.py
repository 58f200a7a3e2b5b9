"""GPU adapters (cuML k-means, cuGraph components, torch-CUDA similarity). Run where RAPIDS is installed."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_frames import backend as nfb
from nemo_frames.dedup.semantic import pair_pass

pytestmark = pytest.mark.gpu


def _data(n: int = 2000, d: int = 32) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    x[1::2] = x[::2] + 0.01
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_torch_cuda_similarity_matches_numpy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = _data()
    a = pair_pass(x, 0.99, similarity="numpy")
    b = pair_pass(x, 0.99, similarity="torch")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_cuml_kmeans_and_cugraph_components():
    cp = pytest.importorskip("cupy")
    pytest.importorskip("cuml")
    pytest.importorskip("cugraph")
    x = cp.asarray(_data())
    c = nfb.kmeans_fit(x, 8, max_iter=10, seed=0)
    assert c.shape == (8, 32) and isinstance(c, cp.ndarray)
    labels = nfb.connected_components(cp.asarray([0, 1, 3]), cp.asarray([1, 2, 4]), 6)
    assert nfb.to_host(labels).tolist() == [0, 0, 0, 1, 1, 2]
