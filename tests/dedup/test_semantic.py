from __future__ import annotations

import math

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from nemo_frames.backend import from_matrix
from nemo_frames.dedup import drop_duplicates, eps_sweep, semantic_duplicates, summary
from nemo_frames.dedup.semantic import SemanticConfig, dedup_cluster, pair_pass
from nemo_frames.dedup.synthetic import pair_scores, planted_embeddings, planted_pairs


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    return planted_embeddings(3000, d=64, partition_rows=1000, n_centers=12, dup_fraction=0.1).compute().reset_index(drop=True)


def _frame(x: np.ndarray, keys, **cols) -> pd.DataFrame:
    return pd.DataFrame({"key": pd.array(list(keys), dtype="string[pyarrow]"), **cols}).assign(embedding=from_matrix(x))


def _chain(score_a: float, score_b: float, score_c: float) -> pd.DataFrame:
    """A~B and B~C (cos 0.993) but A≁C (cos 0.972), plus three unrelated rows."""
    theta = math.acos(0.993)
    x = np.zeros((6, 8), np.float32)
    for i, k in enumerate((0, 1, 2)):
        x[i, 0], x[i, 1] = math.cos(k * theta), math.sin(k * theta)
    x[3, 3] = x[4, 4] = x[5, 5] = 1.0
    return _frame(x, ["A", "B", "C", "u1", "u2", "u3"], aesthetic_score=[score_a, score_b, score_c, 0.0, 0.0, 0.0])


def _kept(t: pd.DataFrame) -> set[str]:
    return set(t.loc[t.is_survivor, "key"])


def test_chain_components_vs_nemo_curator_rule():
    kw = {"eps": 0.01, "n_clusters": 1, "policy": "max_score", "score_column": "aesthetic_score"}
    # ranked A, B, C: both rules keep only A; NeMo removes C through B although B is removed too
    df = _chain(3.0, 2.0, 1.0)
    comp = semantic_duplicates(df, **kw)
    nemo = semantic_duplicates(df, mode="nemo_curator", **kw)
    assert set(comp["key"]) == {"A", "B", "C"} and comp["group_id"].nunique() == 1
    assert _kept(comp) == {"A"} and _kept(nemo) == {"A"}
    assert nemo.set_index("key").loc["C", "matched_key"] == "B"
    # ranked A, C, B: C has no earlier neighbour in NeMo's rule, so it stays; one component keeps one row
    df = _chain(3.0, 1.0, 2.0)
    comp = semantic_duplicates(df, **kw)
    nemo = semantic_duplicates(df, mode="nemo_curator", **kw)
    assert _kept(comp) == {"A"}
    assert _kept(nemo) == {"A", "C"}
    row = comp.set_index("key").loc["C"]
    assert row.matched_key == "B" and row.max_similarity == pytest.approx(0.993, abs=1e-5)
    b = nemo.set_index("key").loc["B"]
    assert b.matched_key in ("A", "C") and b.max_similarity >= 0.99
    assert np.isnan(nemo.set_index("key").loc["A", "max_similarity"])  # ranked first: nothing earlier


def test_planted_precision_recall_and_summary(planted):
    truth = planted_pairs(planted["key"])
    t = semantic_duplicates(planted, eps=0.01, n_clusters=6)
    precision, recall = pair_scores(t, truth)
    assert precision >= 0.99 and recall >= 0.97
    s = summary(t)
    assert s.loc[0, "rows"] == len(planted) and s.loc[0, "removed"] == (~t.is_survivor).sum()
    assert t["group_id"].str.startswith("b").all()  # group ids are the smallest key


@pytest.mark.parametrize("policy", ["farthest_centroid", "nearest_centroid", "max_score", "smallest_key"])
def test_partitioning_does_not_change_results(planted, policy):
    kw = {"eps": 0.01, "n_clusters": 6, "policy": policy, "score_column": "aesthetic_score"}
    ref = semantic_duplicates(dd.from_pandas(planted, npartitions=1), **kw)
    for n in (3, 7):
        shuffled = planted.sample(frac=1.0, random_state=n)
        pd.testing.assert_frame_equal(semantic_duplicates(dd.from_pandas(shuffled, npartitions=n), **kw), ref)


def test_worker_count_does_not_change_results(planted):
    from distributed import Client, LocalCluster

    ddf = dd.from_pandas(planted, npartitions=4)
    out = []
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster):
            out.append(semantic_duplicates(ddf, eps=0.01, n_clusters=6, mode="nemo_curator"))
    pd.testing.assert_frame_equal(out[0], out[1])
    assert len(out[0]) > 100


def test_policies_pick_the_documented_survivor():
    x = np.zeros((2, 4), np.float32)
    x[0, :2] = [1.0, 0.0]
    x[1, :2] = [0.995, math.sqrt(1 - 0.995**2)]
    keys = np.array(["b", "a"], dtype=object)
    centroid = np.array([0.0, 1.0, 0.0, 0.0], np.float32)  # row 1 ("a") is nearer
    score = np.array([2.0, 1.0])

    def survivor(policy: str) -> str:
        t = dedup_cluster(keys, x, score, centroid, SemanticConfig(policy=policy, score_column="s"))
        return t.loc[t.is_survivor, "key"].item()

    assert survivor("nearest_centroid") == "a"
    assert survivor("farthest_centroid") == "b"
    assert survivor("max_score") == "b"
    assert survivor("smallest_key") == "a"


def test_torch_and_numpy_blocks_agree(planted):
    from nemo_frames.backend import to_matrix

    x = to_matrix(planted["embedding"])[:700]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = pair_pass(x, 0.99, block_size=128, similarity="numpy")
    b = pair_pass(x, 0.99, block_size=128, similarity="torch")
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-5)
    assert len(a[0]) > 0


def test_oversized_clusters_are_split(planted):
    t = semantic_duplicates(planted, eps=0.01, n_clusters=1, max_cluster_size=800)
    assert t.attrs["split_clusters"] == 1
    _, recall = pair_scores(t, planted_pairs(planted["key"]))
    assert recall >= 0.9  # pairs cut by a split are lost; most survive
    # near-identical rows defeat 2-means: the fallback still bounds every piece
    near = np.ones((300, 8), np.float32) + np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32) * 1e-4
    t = semantic_duplicates(_frame(near, [f"k{i:03d}" for i in range(300)]), n_clusters=1, max_cluster_size=100)
    assert t.groupby("group_id").size().max() <= 100 and t["is_survivor"].sum() >= 3


def test_eps_sweep_matches_the_dedup_counts(planted):
    sweep = eps_sweep(planted, [0.001, 0.004, 0.01, 0.05], sample_clusters=None, n_clusters=6)
    assert sweep["rows"].iloc[0] == len(planted)
    assert sweep["removed_components"].is_monotonic_increasing
    at = sweep.set_index("eps").loc[0.01]
    for mode, col in (("components", "removed_components"), ("nemo_curator", "removed_nemo_curator")):
        t = semantic_duplicates(planted, eps=0.01, n_clusters=6, mode=mode)
        assert (~t.is_survivor).sum() == at[col]
    assert sweep.set_index("eps").loc[0.001, "removed_components"] == 0  # planted pairs are at cos 0.995
    sampled = eps_sweep(planted, [0.01], sample_clusters=2, n_clusters=6)
    assert 0 < sampled["rows"].iloc[0] < len(planted)


def test_checkpoint_resume_and_refusal(planted, tmp_path):
    kw = {"eps": 0.01, "n_clusters": 6, "checkpoint_dir": tmp_path}
    ref = semantic_duplicates(planted, **kw)
    pairs = tmp_path / "pairs"
    done = sorted(pairs.glob("cluster-*.done"))
    assert len(done) == 6
    # a run killed mid-way: two clusters lost their markers, one left a temporary behind
    for p in done[:2]:
        p.unlink()
    (pairs / ".nf-tmp-dead-cluster-000001.parquet").write_bytes(b"partial")
    (assign,) = tmp_path.glob("assign*")  # one assign stage (its name carries the eps-scaled allowance)
    (assign / "part-000000.done").unlink()
    again = semantic_duplicates(planted, **kw)
    pd.testing.assert_frame_equal(again, ref)
    assert not list(tmp_path.rglob(".nf-tmp-*"))
    with pytest.raises(ValueError, match="different settings"):
        semantic_duplicates(planted, eps=0.02, n_clusters=6, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different settings"):
        semantic_duplicates(planted, eps=0.01, n_clusters=5, checkpoint_dir=tmp_path)
    # the sweep reuses the clustering of the same settings
    assert eps_sweep(planted, [0.01], sample_clusters=None, n_clusters=6, checkpoint_dir=tmp_path)["removed_components"].item() == (~ref.is_survivor).sum()
    # the same settings over other rows (one key renamed): refused, not answered from stale assignments
    other = planted.copy()
    other.loc[5, "key"] = "renamed"
    with pytest.raises(ValueError, match="belongs to one input table"):
        semantic_duplicates(other, **kw)


def test_ledger_rows_and_bad_embeddings_do_not_take_part():
    x = np.eye(5, 8, dtype=np.float32)
    x[1] = x[0]
    x[3] = 0.0  # zero vector: cannot be normalised
    df = _frame(x, list("abcde"), nf_status=pd.array(["ok", "ok", "error", "ok", "ok"], dtype="string[pyarrow]"))
    df.loc[4, "embedding"] = None
    t = semantic_duplicates(df, n_clusters=1, policy="smallest_key")
    assert t["key"].tolist() == ["a", "b"] and t.attrs["n_rows"] == 2 and t.attrs["excluded"] == 2
    marked = drop_duplicates(df, t)
    assert marked["nf_status"].tolist() == ["ok", "filtered", "error", "ok", "ok"]
    assert marked.loc[1, "nf_reason"] == "dedup_semantic: duplicate of a (sim 1.000)"


def test_errors_are_explained():
    df = _frame(np.eye(3, 4, dtype=np.float32), "abc")
    with pytest.raises(KeyError, match="embedding"):
        semantic_duplicates(df.drop(columns="embedding"))
    with pytest.raises(ValueError, match="score_column"):
        semantic_duplicates(df, policy="max_score")
    with pytest.raises(ValueError, match="eps"):
        semantic_duplicates(df, eps=1.5)


def test_sklearn_backend_finds_the_same_planted_pairs(planted):
    truth = planted_pairs(planted["key"])
    with dask.config.set(scheduler="sync"):
        t = semantic_duplicates(planted, eps=0.01, n_clusters=6, backend="sklearn")
    assert min(pair_scores(t, truth)) >= 0.97


def _straddling() -> pd.DataFrame:
    """Two mirror-image blobs around e0 and e1 and, near their bisector, x (44.95°) and y (45.05°):
    a near-identical pair whose rows fall on opposite sides of the k-means boundary (cosine gap
    to the two centroids ≈ 0.0012). z (8.05° below x) is linked to x only, w (mirror of z) to y only."""
    rows, keys = [], []
    for i in range(30):
        for blob in (0, 1):
            v = np.zeros(32, np.float32)
            v[blob], v[2 + i] = 1.0, 0.5  # blob members are at cosine 0.8 to each other
            rows.append(v / np.linalg.norm(v))
            keys.append(f"{'pq'[blob]}{i:02d}")

    def at(deg: float) -> np.ndarray:
        v = np.zeros(32, np.float32)
        v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return v

    for k, deg in (("x", 44.95), ("y", 45.05), ("z", 44.95 - 8.05), ("w", 45.05 + 8.05)):
        rows.append(at(deg))
        keys.append(k)
    return _frame(np.stack(rows), keys)


def test_boundary_copies_find_pairs_that_straddle_clusters():
    df = _straddling()
    kw = {"eps": 0.01, "n_clusters": 2, "policy": "smallest_key"}
    hard = semantic_duplicates(df, boundary_margin=0.0, **kw)
    # without boundary copies x~y is lost: {x, z} and {w, y} are two groups, one per cluster
    assert sorted(map(sorted, hard.groupby("group_id")["key"].apply(list))) == [["w", "y"], ["x", "z"]]
    soft = semantic_duplicates(df, **kw)  # components default: copies within 0.25·√(2·eps)·‖c_a − c_b‖
    assert soft.attrs["boundary_scale"] == 0.25 and soft.attrs["boundary_rows"] >= 2
    fixed = semantic_duplicates(df, boundary_margin=0.002, **kw)  # the fixed cosine margin still works
    assert fixed.attrs["boundary_scale"] == 0.0 and fixed["group_id"].nunique() == 1
    # one group across both clusters, every key once, one survivor (the smallest key)
    assert sorted(soft["key"]) == ["w", "x", "y", "z"] and soft["group_id"].nunique() == 1
    assert soft.loc[soft.is_survivor, "key"].tolist() == ["w"]
    by = soft.set_index("key")
    assert by.loc["x", "matched_key"] == "y" and by.loc["x", "max_similarity"] > 0.9999
    assert by.loc["x", "cluster_id"] != by.loc["y", "cluster_id"]  # the primary (nearest) cluster
    assert by.loc["x", "cluster_id"] == by.loc["z", "cluster_id"]
    # NeMo's rule keeps its hard assignment: boundary copies are ignored even when written
    for margin in (None, 0.002):
        nemo = semantic_duplicates(df, mode="nemo_curator", boundary_margin=margin, **kw)
        assert nemo.attrs["boundary_rows"] == (0 if margin is None else fixed.attrs["boundary_rows"])
        assert set(nemo.loc[~nemo.is_survivor, "key"]) == {"y", "z"}  # x and w rank first; x~y is not seen
        assert sorted(map(sorted, nemo.groupby("group_id")["key"].apply(list))) == [["w", "y"], ["x", "z"]]
    # the sweep merges forests across clusters the same way
    sweep = eps_sweep(df, [0.01], sample_clusters=None, n_clusters=2, policy="smallest_key")
    assert sweep["removed_components"].item() == (~soft.is_survivor).sum() == 3
    assert sweep["removed_nemo_curator"].item() == 2


def test_boundary_results_do_not_depend_on_partitioning(planted):
    kw = {"eps": 0.01, "n_clusters": 6, "boundary_margin": 0.01}
    ref = semantic_duplicates(dd.from_pandas(planted, npartitions=1), **kw)
    assert ref.attrs["boundary_rows"] > 0
    shuffled = planted.sample(frac=1.0, random_state=5)
    pd.testing.assert_frame_equal(semantic_duplicates(dd.from_pandas(shuffled, npartitions=5), **kw), ref)
    assert ref["key"].is_unique
    _, recall = pair_scores(ref, planted_pairs(planted["key"]))
    hard = semantic_duplicates(planted, eps=0.01, n_clusters=6, boundary_margin=0.0)
    assert recall >= pair_scores(hard, planted_pairs(planted["key"]))[1]


@pytest.mark.parametrize("mode", ["components", "nemo_curator"])
def test_identical_embeddings_collapse_to_one_survivor(mode):
    # 3,000 copies of one vector (plus two near copies and unrelated rows), split limit 500:
    # identical rows are one vector for the pairwise work, so the group is neither split nor quadratic
    rng = np.random.default_rng(1)
    v = rng.standard_normal(16).astype(np.float32)
    near = v + rng.standard_normal((2, 16)).astype(np.float32) * 1e-3
    other = rng.standard_normal((40, 16)).astype(np.float32)
    x = np.vstack([np.repeat(v[None], 3000, 0), near, other])
    keys = [f"s{i:04d}" for i in range(3000)] + ["n0", "n1"] + [f"u{i:02d}" for i in range(40)]
    score = np.r_[np.zeros(3000), 1.0, 0.5, np.zeros(40)]
    t = semantic_duplicates(_frame(x, keys, aesthetic_score=score), eps=0.01, n_clusters=1, max_cluster_size=500,
                            mode=mode, policy="max_score", score_column="aesthetic_score", block_size=64)
    group = t[t["key"].str.startswith(("s", "n"))]
    assert len(group) == 3002 and group["group_id"].nunique() == 1 and t.attrs["split_clusters"] == 0
    assert t.loc[t.is_survivor, "key"].tolist() == ["n0"]  # the best score wins, exactly one survivor
    copies = t.set_index("key").loc[[f"s{i:04d}" for i in range(1, 3000)]]
    assert (copies["matched_key"] == "s0000").all() and (copies["max_similarity"] == 1.0).all()
    # the sweep collapses them the same way and counts what the dedup removes
    sweep = eps_sweep(_frame(x, keys, aesthetic_score=score), [0.01], sample_clusters=None, n_clusters=1,
                      max_cluster_size=500, policy="max_score", score_column="aesthetic_score", block_size=64)
    assert sweep[f"removed_{mode}"].item() == (~t.is_survivor).sum() == 3001


def test_link_pass_matches_the_edge_list():
    from nemo_frames.backend import connected_components, to_matrix
    from nemo_frames.dedup.semantic import link_pass

    x = to_matrix(planted_embeddings(900, d=16, partition_rows=900, n_centers=3).compute()["embedding"])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j, _, best, arg = pair_pass(x, 0.75, block_size=100, similarity="numpy")
    labels, nn, nns, best2, arg2 = link_pass(x, 0.75, block_size=100, similarity="numpy")
    ref = connected_components(i, j, len(x))
    assert 5 < len(np.unique(ref)) < len(x) - 200  # many links, so the check means something
    assert pd.crosstab(ref, labels).gt(0).sum(axis=1).eq(1).all() and len(np.unique(labels)) == len(np.unique(ref))
    np.testing.assert_array_equal(best, best2)
    np.testing.assert_array_equal(arg, arg2)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(nns, full.max(axis=1), atol=1e-6)
    np.testing.assert_allclose(full[np.arange(len(x)), nn], nns, atol=1e-6)  # nn is the row that gives it
    pytest.importorskip("torch")
    lt, _, nt, bt, _ = link_pass(x, 0.75, block_size=100, similarity="torch")
    assert pd.crosstab(ref, lt).gt(0).sum(axis=1).eq(1).all() and len(np.unique(lt)) == len(np.unique(ref))
    np.testing.assert_allclose(nt, nns, atol=1e-5)
    np.testing.assert_allclose(bt, best, atol=1e-5)


def test_invalid_embeddings_are_recorded_and_skipped():
    from nemo_frames.dedup import mark_invalid_embeddings
    from nemo_frames.ledger import counts

    x = np.eye(5, 8, dtype=np.float32)
    x[1] = 0.0
    x[2, 3] = np.nan
    x[3, 0] = np.inf
    df = _frame(x, list("abcde"))
    emb = df["embedding"].copy()
    emb.iloc[4] = None
    df["embedding"] = emb
    df = pd.concat([df, _frame(np.eye(2, 8, dtype=np.float32), ["f", "g"])], ignore_index=True)
    out = mark_invalid_embeddings(dd.from_pandas(df, npartitions=2)).compute().set_index("key")
    assert out.loc[["b", "c", "d", "e"], "nf_status"].eq("error").all()
    assert out.loc[["a", "f", "g"], "nf_status"].eq("ok").all()
    assert out.loc["b", "nf_error"].startswith("invalid_embedding: column 'embedding' is all zeros")
    assert "NaN or inf" in out.loc["c", "nf_error"] and "NaN or inf" in out.loc["d", "nf_error"]
    assert out.loc["e", "nf_error"] == "invalid_embedding: column 'embedding' is null"
    assert counts(out.reset_index())["errors_by_code"] == {"invalid_embedding": 4}
    # semantic dedup itself skips them (and counts them), whether or not they were marked
    assert semantic_duplicates(df, n_clusters=1).attrs["excluded"] == 4


def test_embeddings_of_different_lengths_are_refused():
    import pyarrow as pa

    rows = [np.full(767, 0.1, np.float32), np.full(769, 0.1, np.float32)]  # total 1536 = 2 x 768
    emb = pd.Series(pa.array(rows, pa.list_(pa.float32())), dtype=pd.ArrowDtype(pa.list_(pa.float32())))
    df = pd.DataFrame({"key": ["a", "b"], "embedding": emb})
    with pytest.raises(ValueError, match=r"column 'embedding': every embedding must have the same length; "
                                         r"expected 767, found 769 \(1 rows\)"):
        semantic_duplicates(df, n_clusters=1)
    # across partitions too: k-means was fit on one length, a later partition has another
    a = _frame(np.eye(4, 8, dtype=np.float32), list("abcd"))
    b = _frame(np.eye(4, 6, dtype=np.float32), list("efgh"))
    with pytest.raises(ValueError, match=r"embeddings of different dimensions|length 6, expected 8"):
        semantic_duplicates(dd.concat([dd.from_pandas(a, npartitions=1), dd.from_pandas(b, npartitions=1)]), n_clusters=1)


def test_boundary_allowance_follows_eps_on_anisotropic_data():
    # duplicates offset along the directions k-means cuts: a fixed cosine margin misses pairs
    # across boundaries, the eps-scaled allowance finds them all (0.5 is the sound value)
    df = planted_embeddings(6000, d=64, n_centers=1, axes=4, partition_rows=6000, cosine=0.995).compute()
    truth = planted_pairs(df["key"])
    recall = {}
    for name, kw in {"hard": {"boundary_margin": 0.0}, "fixed": {"boundary_margin": 0.002}, "default": {},
                     "sound": {"boundary_scale": 0.5}}.items():
        t = semantic_duplicates(df, eps=0.01, n_clusters=8, **kw)
        precision, recall[name] = pair_scores(t, truth)
        assert precision == 1.0
    assert recall["hard"] < 0.97 and recall["fixed"] < 0.97
    assert recall["default"] >= 0.99 and recall["sound"] == 1.0


def test_curate_dedup_records_invalid_embeddings_in_the_ledger(tmp_path):
    # the dedup stage of curate (pipeline._dedup) on a scored table with bad embeddings
    from nemo_frames.config import config_from_dict
    from nemo_frames.ledger import counts
    from nemo_frames.pipeline import ScorePlan, _dedup

    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    x[1] = x[0]  # a duplicate
    x[2] = 0.0
    x[3, 5] = np.nan
    df = _frame(x, [f"k{i}" for i in range(8)])
    cfg = config_from_dict({"input": {"urls": "a.tar"}, "output": str(tmp_path / "o"),
                            "dedup": {"semantic": {"eps": 0.01, "n_clusters": 1}}})
    table, info = _dedup(cfg, dd.from_pandas(df, npartitions=2), ScorePlan(kwargs={}), [], None,
                         upstream="test", overwrite=True)
    out = table.compute().set_index("key")
    assert counts(out.reset_index())["errors_by_code"] == {"invalid_embedding": 2}
    assert out.loc[["k2", "k3"], "nf_error"].str.startswith("invalid_embedding: column 'embedding'").all()
    assert info["semantic"] == 1 and out.loc["k1", "nf_status"] == "filtered"


def test_identical_rows_get_one_centroid_and_no_boundary_copies():
    # k-means on copies of one vector returns k copies of one point (float noise apart): without
    # dropping them every row would tie between all and be copied to each
    x = np.repeat(np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32), 2000, 0)
    t = semantic_duplicates(_frame(x, [f"k{i:04d}" for i in range(2000)]), eps=0.01, n_clusters=8)
    assert t.attrs["n_clusters"] == 1 and t.attrs["boundary_rows"] == 0
    assert t["is_survivor"].sum() == 1 and len(t) == 2000


def test_reading_a_bucket_a_few_clusters_at_a_time_changes_nothing(planted, monkeypatch):
    """Pairs and sweep tasks read their bucket in runs of READ_ROWS rows (boundary copies included)."""
    import nemo_frames.dedup.semantic as sem

    ddf = dd.from_pandas(planted, npartitions=3)
    kw = {"n_clusters": 6, "boundary_margin": 0.02}
    ref = semantic_duplicates(ddf, eps=0.01, **kw)
    ref_sweep = eps_sweep(ddf, [0.004, 0.01, 0.05], sample_clusters=4, **kw)
    assert ref.attrs["boundary_rows"] > 0
    assert len(sem._read_groups(list(range(6)), np.full(6, 700))) == 1
    reads = []
    plain = sem._read_bucket

    def counted(assign_dir, b, clusters):
        reads.append(list(clusters))
        return plain(assign_dir, b, clusters)

    monkeypatch.setattr(sem, "READ_ROWS", 1)  # every cluster is read on its own
    monkeypatch.setattr(sem, "_read_bucket", counted)
    pd.testing.assert_frame_equal(semantic_duplicates(ddf, eps=0.01, **kw), ref)
    pd.testing.assert_frame_equal(eps_sweep(ddf, [0.004, 0.01, 0.05], sample_clusters=4, **kw), ref_sweep)
    assert reads and all(len(c) == 1 for c in reads)
    assert len(reads) == 6 + 4
