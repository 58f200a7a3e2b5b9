"""Keys repeated across shards: the distributed count by key, its actions, and curate end to end."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from nemo_frames.backend import from_matrix
from nemo_frames.dedup import semantic_duplicates
from nemo_frames.io.keys import find_repeated_keys, mark_repeated_keys
from nemo_frames.io.webdataset import ShardScanError
from nemo_frames.pipeline import curate
from tests.conftest import sample_members, write_tar


def _table(rows: list[tuple[str, str, int]], nparts: int) -> dd.DataFrame:
    """A sample table of (key, source, image_offset) rows, all ok, split in ``nparts`` partitions."""
    df = pd.DataFrame(rows, columns=["key", "source", "image_offset"]).astype(
        {"key": "string[pyarrow]", "source": "string[pyarrow]", "image_offset": "Int64"}
    )
    df["nf_status"] = pd.Series("ok", index=df.index, dtype="string[pyarrow]")
    return dd.from_pandas(df, npartitions=nparts, sort=False)


def test_first_occurrence_is_by_shard_order_then_offset():
    # Partition order (s1 first) differs from the shard order given (s0 first): the shard order decides.
    rows = [("a", "s1", 512), ("b", "s1", 4096), ("a", "s0", 9000), ("a", "s0", 512), ("c", "s0", 100)]
    ddf = _table(rows, 2)
    out, record = mark_repeated_keys(ddf, shards=["s0", "s1"])
    p = out.compute()
    kept = p[p.nf_status == "ok"]
    assert sorted(kept.key) == ["a", "b", "c"]
    assert kept.set_index("key").loc["a", "source"] == "s0"
    assert kept.set_index("key").loc["a", "image_offset"] == 512
    dropped = p[p.nf_status == "filtered"]
    assert sorted(zip(dropped.source, dropped.image_offset, strict=True)) == [("s0", 9000), ("s1", 512)]
    assert set(dropped.nf_reason) == {"duplicate_key: also in s0"}
    assert record[["key", "source", "offset", "rank"]].values.tolist() == [["a", "s0", 9000, 1], ["a", "s1", 512, 2]]


def test_rename_is_deterministic_and_keeps_keys_unique():
    # "a" three times, and a real key "a_dup2" that the third "a" would be renamed to.
    rows = [("a", "s0", 0), ("a_dup2", "s0", 1024), ("a", "s1", 0), ("a", "s2", 0)]
    out, record = mark_repeated_keys(_table(rows, 3), action="rename", shards=["s0", "s1", "s2"])
    p = out.compute()
    assert p.key.tolist() == ["a", "a_dup2", "a_dup1", "a_dup2"]
    # The renamed third "a" collides with the real "a_dup2" (an earlier shard): it is filtered, not exported twice.
    assert p.nf_status.tolist() == ["ok", "ok", "ok", "filtered"]
    assert p.nf_reason.iloc[3] == "duplicate_key: also in s0"
    ok = p[p.nf_status == "ok"]
    assert ok.key.is_unique
    assert record.action.tolist() == ["rename", "rename", "filter"]
    again, _ = mark_repeated_keys(_table(rows, 3), action="rename", shards=["s0", "s1", "s2"])
    pd.testing.assert_frame_equal(again.compute(), p)


def test_error_action_and_rows_already_errored_are_left_alone():
    df = pd.DataFrame({"key": ["a", "a", "a"], "source": ["s0", "s1", "s2"], "image_offset": [0, 0, 0]})
    df["nf_status"] = ["error", "ok", "ok"]
    df["nf_error"] = ["decode_error: bad", None, None]
    df = df.astype({"key": "string[pyarrow]", "nf_status": "string[pyarrow]", "nf_error": "string[pyarrow]"})
    out, _ = mark_repeated_keys(dd.from_pandas(df, npartitions=3, sort=False), action="error", shards=["s0", "s1", "s2"])
    p = out.compute()
    # Only ok rows take part: s1's is the first usable occurrence; s0's own error is untouched.
    assert p.nf_status.tolist() == ["error", "ok", "error"]
    assert p.nf_error.iloc[0] == "decode_error: bad"
    assert p.nf_error.iloc[2] == "duplicate_key: key 'a' also in s1 (its first occurrence, which is kept)"


def test_no_repeats_returns_the_frame_untouched():
    ddf = _table([("a", "s0", 0), ("b", "s1", 0)], 2)
    out, record = mark_repeated_keys(ddf)
    assert out is ddf and record.empty


def test_detection_task_graph_is_linear_in_partitions():
    per_part = []
    for nparts in (8, 32, 128, 512, 2048):
        rows = [(f"k{i % 1000}", f"s{i // 4}", i) for i in range(nparts * 4)]
        graph = find_repeated_keys(_table(rows, nparts), shards=[f"s{i}" for i in range(nparts)]).__dask_graph__()
        per_part.append(len(graph) / nparts)
    # A bounded number of tasks per partition over 256× more partitions: no all-to-all step whose task
    # count grows with P² (the staged shuffle adds one stage per 32× more buckets, 16 partitions a bucket).
    assert max(per_part) < 7, per_part
    assert per_part[-1] <= 1.6 * per_part[0], per_part


def test_detection_finds_repeats_among_many_rows():
    n = 200_000
    keys = [f"k{i:07d}" for i in range(n)]
    keys[150_000] = keys[10]  # one repeat, far apart
    rows = [(k, f"s{i // 5000:03d}", (i % 5000) * 1024) for i, k in enumerate(keys)]
    rep = find_repeated_keys(_table(rows, 40)).compute()
    assert rep[["key", "shard", "first_shard"]].values.tolist() == [["k0000010", 30, 0]]


def test_semantic_dedup_refuses_repeated_keys_clearly():
    x = np.array([[1, 0, 0], [1, 0, 0], [0.99, 0.1, 0]], np.float32)
    df = pd.DataFrame({"key": pd.array(["z", "z", "b"], dtype="string[pyarrow]")}).assign(embedding=from_matrix(x))
    for frame in (df, dd.from_pandas(df, npartitions=2, sort=False)):
        with pytest.raises(ValueError, match=r"semantic_duplicates: column 'key' is not unique \(e\.g\. 'z'\)"):
            semantic_duplicates(frame, eps=0.05, n_clusters=1)
    # Once the repeat is marked (as curate does), the remaining rows deduplicate normally.
    marked = df.assign(nf_status=pd.array(["ok", "error", "ok"], dtype="string[pyarrow]"))
    t = semantic_duplicates(marked, eps=0.05, n_clusters=1, policy="smallest_key")
    assert sorted(t.key) == ["b", "z"] and t.is_survivor.sum() == 1


# --------------------------------------------------------------------------- curate end to end
def _two_shards_with_a_shared_key(d: Path, jpegs: dict[str, bytes]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    # a0005 is in both shards, with different photos; shard 1 also repeats shard 0's photo under a new key.
    write_tar(d / "00000.tar", [m for i, p in enumerate(("astronaut", "coffee", "chelsea"))
                                for m in sample_members(f"a000{i + 3}", jpegs[p], f"first {p}", {"n": i})])
    write_tar(d / "00001.tar", sample_members("a0005", jpegs["rocket"], "second rocket", {"n": 9})
              + sample_members("b0001", jpegs["motorcycle"], "moto", {"n": 10}))


def _config(d: Path, out: Path, **over) -> dict:
    cfg = {
        "input": {"urls": str(d)},
        "output": str(out),
        "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 2}},
        "score": {"clip": None, "qr": False, "blur": False},
        "dedup": {"exact": True},
        "export": {"samples_per_shard": 10},
        "report": {"enabled": False},
    }
    for k, v in over.items():
        head, last = k.split(".")
        cfg.setdefault(head, {})[last] = v
    return cfg


def _exported(result) -> dict[str, bytes]:
    """Every exported member name → bytes."""
    out = {}
    for tar in sorted(Path(result.export.path).glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                out[m.name] = t.extractfile(m).read()
    return out


@pytest.mark.parametrize("exact", [True, False])
def test_curate_filters_a_key_repeated_across_shards_by_default(tmp_path, jpegs, exact):
    d = tmp_path / "in"
    _two_shards_with_a_shared_key(d, jpegs)
    r = curate(_config(d, tmp_path / "out", **{"dedup.exact": exact}), progress=False)
    t = r.table().compute()
    rows = t[t.key == "a0005"]
    assert len(rows) == 2
    first = rows[rows.source.str.endswith("00000.tar")].iloc[0]
    later = rows[rows.source.str.endswith("00001.tar")].iloc[0]
    assert first.nf_status == "ok"
    assert later.nf_status == "filtered"
    assert later.nf_reason == f"duplicate_key: also in {d / '00000.tar'}"
    assert r.summary["filtered_by_reason"] == {"duplicate_key": 1}
    assert r.summary["duplicate_keys"]["repeats"] == 1
    members = _exported(r)
    assert sorted(n for n in members if n.endswith(".jpg")) == ["a0003.jpg", "a0004.jpg", "a0005.jpg", "b0001.jpg"]
    assert members["a0005.jpg"] == jpegs["chelsea"]  # the first shard's sample, not the rocket
    rec = pd.read_parquet(Path(r.output) / "dedup" / "duplicate_keys.parquet")
    assert rec[["key", "action"]].values.tolist() == [["a0005", "filter"]]


def test_curate_renames_a_repeated_key_when_asked(tmp_path, jpegs):
    d = tmp_path / "in"
    _two_shards_with_a_shared_key(d, jpegs)
    r = curate(_config(d, tmp_path / "out", **{"input.duplicate_keys": "rename"}), progress=False)
    members = _exported(r)
    assert members["a0005.jpg"] == jpegs["chelsea"]
    assert members["a0005_dup1.jpg"] == jpegs["rocket"]
    assert members["a0005_dup1.txt"] == b"second rocket"
    assert json.loads(members["a0005_dup1.json"])["n"] == 9
    assert r.summary["kept"] == 5 and r.summary["filtered"] == 0


def test_curate_errors_a_repeated_key_when_asked(tmp_path, jpegs):
    d = tmp_path / "in"
    _two_shards_with_a_shared_key(d, jpegs)
    r = curate(_config(d, tmp_path / "out", **{"input.duplicate_keys": "error"}), progress=False)
    assert r.summary["errors_by_code"] == {"duplicate_key": 1}
    assert sorted(n for n in _exported(r) if n.endswith(".jpg")) == ["a0003.jpg", "a0004.jpg", "a0005.jpg", "b0001.jpg"]
    cfg = _config(d, tmp_path / "strict", **{"input.duplicate_keys": "error"})
    with pytest.raises(ShardScanError, match=r"'a0005' in .*00001\.tar \(also in .*00000\.tar\)"):
        curate({**cfg, "on_error": "raise"}, progress=False)
