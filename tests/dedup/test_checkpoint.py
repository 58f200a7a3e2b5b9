from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from nemo_frames.dedup._checkpoint import Checkpoint, config_hash


def test_atomic_write_and_marker(tmp_path):
    ck = Checkpoint(tmp_path, "stage", {"eps": 0.01})
    assert not ck.is_done("part-0")
    p = ck.write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), "sub/part-0")
    assert pq.read_table(p).num_rows == 2
    # written but not marked: a resumed run must redo it
    assert not ck.is_done("sub/part-0")
    ck.mark_done("sub/part-0", {"rows": 2})
    assert ck.is_done("sub/part-0")
    assert ck.read_done("sub/part-0") == {"rows": 2, "config_hash": ck.hash}
    # a second finisher of the same task does not overwrite or fail
    ck.mark_done("sub/part-0", {"rows": 99})
    assert ck.read_done("sub/part-0")["rows"] == 2
    assert not list(tmp_path.rglob(".nf-tmp-*"))


def test_temporaries_of_killed_writers_are_swept(tmp_path):
    Checkpoint(tmp_path, "stage", {"k": 1})
    (tmp_path / "stage" / ".nf-tmp-dead-part-3.parquet").write_bytes(b"half a file")
    ck = Checkpoint(tmp_path, "stage", {"k": 1})
    assert not list((tmp_path / "stage").glob(".nf-tmp-*"))
    assert not ck.is_done("part-3")


def test_refuses_to_resume_under_other_settings(tmp_path):
    Checkpoint(tmp_path, "stage", {"eps": 0.01, "mode": "components"})
    with pytest.raises(ValueError, match=r"different settings.*\['eps'\]"):
        Checkpoint(tmp_path, "stage", {"eps": 0.02, "mode": "components"})
    Checkpoint(tmp_path, "stage", {"mode": "components", "eps": 0.01})  # same settings, any key order


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
