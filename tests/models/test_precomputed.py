"""Precomputed embeddings from the JSON sidecars: parsed, checked, normalised, and used by curate's semantic dedup."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from nemo_frames.models.precomputed import (
    SidecarEmbedding,
    SidecarEmbeddingConfig,
    infer_dim,
    sidecar_embeddings,
)


def _frame(docs: list[object]) -> pd.DataFrame:
    return pd.DataFrame({
        "key": [f"k{i}" for i in range(len(docs))],
        "json": pd.array([None if d is None else (d if isinstance(d, str) else json.dumps(d)) for d in docs],
                         dtype="string[pyarrow]"),
    })


def test_vectors_are_normalised_checked_and_removed_from_json():
    docs = [{"emb": [3.0, 4.0, 0.0], "url": "u0"}, {"emb": [1, 2]}, {"emb": [1, "x", 2]}, {"emb": [1, float("nan"), 2]},
            {"url": "u4"}, None, "not json", {"emb": [0, 0, 0]}]
    out = SidecarEmbedding(SidecarEmbeddingConfig("emb", 3)).transform(_frame(docs))
    emb = out["embedding"].tolist()
    np.testing.assert_allclose(emb[0], [0.6, 0.8, 0.0], rtol=1e-6)
    assert out["embedding"].dtype == pd.ArrowDtype(__import__("pyarrow").list_(__import__("pyarrow").float32()))
    # malformed vectors are errors that say what was expected and found; absent ones stay null and ok
    assert out["nf_status"].tolist() == ["ok", "error", "error", "error", "ok", "ok", "ok", "ok"]
    assert "expected a list of 3 finite numbers, found a list of 2" in out["nf_error"][1]
    assert "found the value 'x'" in out["nf_error"][2]
    assert all(emb[i] is pd.NA for i in (1, 2, 3, 4, 5, 6))
    assert emb[7] == [0.0, 0.0, 0.0]  # a zero vector is carried as is; semantic dedup decides what to do with it
    assert out["json"].tolist()[:2] == ['{"url":"u0"}', pd.NA] and out["json"][6] == "not json"
    # the other fields of the sidecar survive
    assert json.loads(out["json"][4]) == {"url": "u4"}


def test_dask_frame_and_meta():
    import dask.dataframe as dd

    df = _frame([{"emb": [1.0, 0.0]}, {"emb": [0.0, 2.0]}, {"emb": [1.0, 1.0]}])
    out = sidecar_embeddings(dd.from_pandas(df, npartitions=2), "emb", 2)
    assert "embedding" in out._meta.columns
    got = out.compute()["embedding"].tolist()
    np.testing.assert_allclose(got[2], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)


def _shard(path, docs):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for i, d in enumerate(docs):
            data = json.dumps(d).encode()
            ti = tarfile.TarInfo(f"s{i:03d}.json")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_infer_dim_reads_the_first_sidecar_with_the_field(tmp_path):
    p = tmp_path / "a.tar"
    _shard(p, [{"x": 1}, {"emb": []}, {"emb": [0.1] * 5}])
    assert infer_dim(str(p), "emb") == 5
    assert infer_dim(str(p), "nope") is None


@pytest.mark.integration
def test_curate_dedups_on_sidecar_embeddings(tmp_path):
    """Two photos' samples with near-identical precomputed vectors: semantic dedup removes exactly one."""
    from skimage import data

    import nemo_frames as nf
    from nemo_frames.config import ConfigError

    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    import cv2

    shard = tmp_path / "00000.tar"
    vecs = rng.normal(size=(4, 16))
    vecs[3] = vecs[2] + 0.001  # sample 3 is a near duplicate of sample 2, by its vector only
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tf:
        for i, (img, v) in enumerate(zip(photos, vecs, strict=True)):
            _, jpg = cv2.imencode(".jpg", cv2.resize(img, (128, 128)))
            for ext, payload in (("jpg", jpg.tobytes()), ("json", json.dumps({"emb": v.tolist(), "url": f"u{i}"}).encode())):
                ti = tarfile.TarInfo(f"p{i}.{ext}")
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
    cfg = {
        "input": {"urls": str(shard)},
        "output": str(tmp_path / "out"),
        "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 1}},
        "score": {"clip": None, "qr": False, "embedding_field": "emb"},
        "filters": [],
        "dedup": {"exact": True, "perceptual": None, "semantic": {"eps": 0.01, "n_clusters": 1}},
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    res = nf.curate(cfg, progress=False)
    assert res.summary["filtered_by_reason"] == {"dedup_semantic": 1}
    table = res.table().compute().set_index("key")
    gone = [k for k in ("p2", "p3") if table.loc[k, "nf_status"] == "filtered"]
    assert len(gone) == 1
    other = {"p2": "p3", "p3": "p2"}[gone[0]]
    assert table.loc[gone[0], "nf_reason"].startswith(f"dedup_semantic: duplicate of {other}")
    # the vector is not carried twice: it was the only nested field, so json is empty; url is a column
    assert table.loc["p0", "json"] is pd.NA and table.loc["p0", "url"] == "u0"
    with pytest.raises(ConfigError, match="embedding_field"):
        nf.curate({**cfg, "score": {**cfg["score"], "embedding_field": "missing"}, "output": str(tmp_path / "o2")},
                  progress=False)
