"""Battery item 7: the commit protocol on a local S3 fake (moto server on 127.0.0.1).

Extends tests/io/test_commit.py and test_export.py (which cover one exception mid-write and two writers of
one unit) to whole jobs: an export whose input fails mid-job publishes no shard without its done marker,
and a rerun completes it; many writers racing for the same shards yield exactly one winner per shard and
an output equal to a clean local export.
"""

from __future__ import annotations

import threading
import uuid

import dask
import pandas as pd
import pytest

from nemo_frames.io.commit import Committer
from nemo_frames.io.export import write_webdataset
from nemo_frames.io.webdataset import read_webdataset
from tests.io._export_fixtures import MotoS3
from tests.reliability._battery import record

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    server = MotoS3()
    yield server
    server.stop()


def _fail_on(df: pd.DataFrame, bad: str) -> pd.DataFrame:
    if len(df) and str(df["source"].iloc[0]).endswith(bad):
        raise RuntimeError("injected failure while reading this partition")
    return df


def _s3_keys(s3, prefix: str) -> list[str]:
    """Sample keys of every published tar on S3 (read back through the reader)."""
    df = read_webdataset(f"s3://{prefix}/*.tar", storage_options=s3.storage_options).compute(scheduler="sync")
    return df[df["nf_status"] == "ok"]["key"].tolist()


def test_failed_job_publishes_only_complete_shards_and_rerun_completes(make_shards, s3):
    src, expected = make_shards(n_shards=6, per_shard=4)
    prefix = f"nf-test/rel-{uuid.uuid4().hex[:8]}"
    url = f"s3://{prefix}"
    ddf = read_webdataset(str(src))
    with pytest.raises(RuntimeError, match="injected"), dask.config.set(scheduler="sync"):
        write_webdataset(ddf.map_partitions(_fail_on, "00003.tar", meta=ddf._meta), url, samples_per_shard=4,
                         storage_options=s3.storage_options, progress=False)
    fs = s3.new_fs()
    names = {p.rsplit("/", 1)[-1] for p in fs.find(prefix)}
    tars = {n[:-4] for n in names if n.endswith(".tar")}
    done = set(Committer(url, stage="export", config={}, storage_options=s3.storage_options,
                         run_files=()).markers()) if tars else set()
    unmarked = tars - done
    with dask.config.set(scheduler="sync"):
        write_webdataset(ddf, url, samples_per_shard=4, storage_options=s3.storage_options, progress=False)
    keys = _s3_keys(s3, prefix)
    record("7. object store: job fails mid-export on S3, then rerun", kinds=1, inputs=len(expected), crashes=0,
           silent=len(unmarked), lost=len(set(expected) - set(keys)), duplicates=len(keys) - len(set(keys)),
           published_without_marker=len(unmarked))
    assert not unmarked, unmarked
    assert sorted(keys) == sorted(expected)


def test_racing_exports_one_winner_per_shard(make_shards, s3, tmp_path):
    src, expected = make_shards(n_shards=4, per_shard=5)
    prefix = f"nf-test/race-{uuid.uuid4().hex[:8]}"
    url = f"s3://{prefix}"
    with dask.config.set(scheduler="sync"):
        clean = write_webdataset(read_webdataset(str(src)), str(tmp_path / "clean"), samples_per_shard=3,
                                 progress=False)
    results, errors = [], []

    def export():
        try:
            with dask.config.set(scheduler="sync"):
                results.append(write_webdataset(read_webdataset(str(src)), url, samples_per_shard=3,
                                                storage_options=s3.storage_options, progress=False))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=export) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    written = sum(r.written for r in results)
    keys = _s3_keys(s3, prefix)
    fs = s3.new_fs()
    for name in clean.shards:
        assert fs.cat(f"{prefix}/{name}.tar") == (tmp_path / "clean" / f"{name}.tar").read_bytes()
    record("7. object store: 3 exports racing on S3", kinds=1, inputs=3 * len(expected), crashes=len(errors),
           silent=0, lost=len(set(expected) - set(keys)), duplicates=len(keys) - len(set(keys)),
           shards=len(clean.shards), shard_writes_attempted=written)
    assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys))
