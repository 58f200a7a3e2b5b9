"""Battery item 9: identical outputs across reruns and across 1, 2 and 4 workers (score + export)."""

from __future__ import annotations

import pandas as pd
import pytest

from nemo_frames.io.export import write_webdataset
from nemo_frames.io.parquet import read_parquet, write_parquet
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.scoring import score
from tests.reliability._battery import record
from tests.reliability._digest import export_digest


def _run(src, out, client=None):
    scored = score(read_webdataset(str(src), partition_bytes=60_000), blur=True, phash=True)
    write_parquet(scored, out / "table", overwrite=True)
    write_webdataset(scored, str(out / "export"), samples_per_shard=5, write_index=True, progress=False)
    table = read_parquet(out / "table").compute(scheduler="sync").reset_index(drop=True)
    return table, export_digest(out / "export")


@pytest.mark.integration
def test_identical_across_reruns_and_worker_counts(make_shards, tmp_path):
    from nemo_frames.cluster import cluster

    src, expected = make_shards(n_shards=6, per_shard=4)
    runs = {}
    for label in ("sync-1", "sync-2"):
        import dask

        with dask.config.set(scheduler="sync"):
            runs[label] = _run(src, tmp_path / label)
    for n in (1, 2, 4):
        with cluster("local", n_workers=n, threads_per_worker=1, processes=False) as client:
            client.wait_for_workers(n, timeout=60)
            runs[f"{n}-workers"] = _run(src, tmp_path / f"w{n}")
    ref_table, ref_digest = runs["sync-1"]
    differing = []
    for label, (table, digest) in runs.items():
        try:
            pd.testing.assert_frame_equal(table, ref_table)
        except AssertionError:
            differing.append(f"{label}: table")
        if digest != ref_digest:
            differing.append(f"{label}: export {sorted(k for k in digest if digest[k] != ref_digest.get(k))}")
    record("9. determinism (reruns; 1, 2, 4 workers; score + export)", kinds=2, inputs=len(runs), crashes=0,
           silent=len(differing), lost=len(expected) - len(ref_table), duplicates=int(ref_table["key"].duplicated().sum()))
    assert not differing, differing
    assert len(ref_table) == len(expected) and (ref_table["nf_status"] == "ok").all()
