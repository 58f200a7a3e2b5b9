"""Battery item 5: worker processes killed mid-run (SIGKILL / SIGSEGV), and every worker gone.

A wrapper stage kills the worker process the first time it sees a partition (a marker file per partition
makes the retry succeed). The scored table and the exported bytes must equal a clean run's. With all
workers gone, a scoring job must fail within the no-workers timeout with a clear message, not hang.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import dask
import pandas as pd
import pytest

from nemo_frames.io.export import write_webdataset
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.scoring import score
from tests.reliability._battery import record
from tests.reliability._digest import export_digest

pytestmark = pytest.mark.integration


def kill_once(df: pd.DataFrame, marker_dir: str, kill: tuple[str, ...], sig: int) -> pd.DataFrame:
    """Kill this worker process the first time a partition whose shard is in ``kill`` passes.

    ``sig`` is used for the first kill of a run and SIGKILL for the others.
    """
    if len(df) and df["source"].iloc[0] is not None:
        part = Path(str(df["source"].iloc[0])).stem
        marker = Path(marker_dir) / part
        if part in kill and not marker.exists():
            first = not any(Path(marker_dir).iterdir())
            marker.write_text(str(os.getpid()))
            if sig == signal.SIGSEGV and first:
                import ctypes

                # A real segfault (a read at address 0), as distributed.chaos.KillWorker(mode="segfault") does:
                # os.kill(SIGSEGV) can be caught by a handler in the worker, which then lingers until the Nanny
                # kills it and, being "closing", is not restarted.
                ctypes.string_at(0)
            os.kill(os.getpid(), sig if first else signal.SIGKILL)
            time.sleep(5)  # SIGSEGV's default action ends the process; never return
    return df


def _killed(ddf, marker_dir: Path, kill: list[str], phase: int):
    sig = signal.SIGSEGV if phase % 2 else signal.SIGKILL
    return ddf.map_partitions(kill_once, str(marker_dir), tuple(kill), int(sig), meta=ddf._meta)


_digest = export_digest


def _scored(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("key", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("n_kill", [pytest.param(2, id="2+2-deaths"),
                                    pytest.param(8, id="8+8-deaths", marks=pytest.mark.slow)])
def test_workers_killed_mid_score_and_export_change_nothing(make_shards, tmp_path, n_kill):
    from nemo_frames.cluster import cluster

    src, _ = make_shards(n_shards=8, per_shard=5)
    shards = [f"{i:05d}" for i in range(8)]
    kill = shards[:: 8 // n_kill]  # spread out, so both workers rarely die at the same moment

    # Clean reference run, in-process.
    with dask.config.set(scheduler="sync"):
        clean_df = _scored(score(read_webdataset(str(src)), blur=True, phash=True).compute())
        write_webdataset(score(read_webdataset(str(src)), blur=True, phash=True), str(tmp_path / "clean"),
                         samples_per_shard=7, progress=False)

    deaths = 0
    with dask.config.set({"nemo_frames.cluster.allowed-failures": 10}), cluster(
        "local", n_workers=2, threads_per_worker=1, memory_limit="2GiB", no_workers_timeout="120s"
    ) as client:
        client.wait_for_workers(2, timeout=60)
        m1 = tmp_path / "markers-score"
        m1.mkdir()
        got = _scored(score(_killed(read_webdataset(str(src)), m1, kill, 0), blur=True, phash=True).compute())
        deaths += len(list(m1.iterdir()))
        m2 = tmp_path / "markers-export"
        m2.mkdir()
        write_webdataset(score(_killed(read_webdataset(str(src)), m2, kill, 1), blur=True, phash=True),
                         str(tmp_path / "chaos"), samples_per_shard=7, progress=False)
        deaths += len(list(m2.iterdir()))
    pd.testing.assert_frame_equal(got, clean_df)
    da, db = _digest(tmp_path / "chaos"), _digest(tmp_path / "clean")
    same_export = da == db
    n = len(clean_df)
    out_keys = read_webdataset(str(tmp_path / "chaos")).compute(scheduler="sync")["key"].tolist()
    record("5. worker faults (SIGKILL/SIGSEGV mid score + export)", kinds=2, inputs=2 * n, crashes=0,
           worker_deaths=deaths, silent=int(not same_export), lost=n - len(set(out_keys)),
           duplicates=len(out_keys) - len(set(out_keys)), identical_to_clean=same_export)
    assert deaths == 2 * n_kill
    assert same_export and sorted(out_keys) == sorted(clean_df["key"])


def _leave_now(dask_worker):
    # What distributed.chaos.KillWorker(mode="sys.exit") does: the worker leaves and is not restarted.
    dask_worker.loop.asyncio_loop.call_later(0.05, sys.exit, 0)


def _slow_partition(df: pd.DataFrame) -> pd.DataFrame:
    time.sleep(1.0)
    return df


def test_all_workers_gone_during_scoring_fails_fast_with_a_clear_message(make_shards):
    from distributed.scheduler import NoWorkerError

    from nemo_frames.cluster import cluster

    src, _ = make_shards(n_shards=6, per_shard=3)
    with cluster("local", n_workers=2, threads_per_worker=1, memory_limit="2GiB", no_workers_timeout="3s") as client:
        client.wait_for_workers(2, timeout=60)
        ddf = score(read_webdataset(str(src)).map_partitions(_slow_partition), blur=True, phash=False)
        fut = client.compute(ddf)
        time.sleep(0.5)
        client.run(_leave_now)
        start = time.monotonic()
        with pytest.raises(NoWorkerError, match="without any running workers") as info:
            fut.result(timeout=120)
        took = time.monotonic() - start
    record("5. all workers gone (scoring job)", kinds=1, inputs=1, crashes=0, hangs=int(took >= 60), silent=0,
           lost=0, duplicates=0, seconds_to_fail=round(took, 1), message=str(info.value)[:120])
    assert took < 60
