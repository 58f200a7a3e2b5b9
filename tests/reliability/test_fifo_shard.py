"""Issue 16 item 7: a FIFO or device given as a shard path is recorded ``shard_unreadable``, never read.

Opening a FIFO for reading blocks until a writer appears (the run hung); ``/dev/zero`` never ends. Both are
given as explicit shard paths between good shards, through the reader and through ``curate``; the good
samples come out byte-identical and the special files are named in the ledger.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from nemo_frames.io.urls import NotRegularFile, open_shard
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.pipeline import curate

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")


def _inputs(make_shards) -> tuple[list[str], dict[str, dict], str]:
    d, expected = make_shards(n_shards=2, per_shard=4)
    fifo = d / "00001b.tar"
    os.mkfifo(fifo)
    return [str(d / "00000.tar"), str(fifo), str(d / "00001.tar")], expected, str(fifo)


@pytest.mark.timeout(60)  # the bug this guards against is a hang
def test_fifo_and_device_paths_are_recorded_not_opened(make_shards):
    urls, expected, fifo = _inputs(make_shards)
    urls.append("/dev/zero")
    df = read_webdataset(urls, fields=None).compute(scheduler="sync")
    good = df[df.key.notna()]
    assert sorted(good.key) == sorted(expected) and set(good.nf_status) == {"ok"}
    bad = df[df.key.isna()].set_index("source")
    assert sorted(bad.index) == sorted([os.path.abspath(fifo), "/dev/zero"])
    assert set(bad.nf_status) == {"error"}
    assert bad.at[os.path.abspath(fifo), "nf_error"].startswith("shard_unreadable: ")
    assert "is a FIFO (named pipe), not a regular file" in bad.at[os.path.abspath(fifo), "nf_error"]
    assert "is a character device, not a regular file" in bad.at["/dev/zero", "nf_error"]
    with pytest.raises(NotRegularFile, match="FIFO"):
        open_shard(fifo)


@pytest.mark.timeout(120)
def test_curate_with_a_fifo_shard_keeps_every_good_sample(make_shards, tmp_path: Path):
    urls, expected, fifo = _inputs(make_shards)
    out = tmp_path / "run"
    cfg = {
        "input": {"urls": urls},
        "output": str(out),
        "cluster": {"kind": "threads", "options": {"n_workers": 1}},
        "score": {"clip": None, "blur": True},
        "dedup": {"exact": False},
        "report": {"enabled": False},
    }
    s = curate(cfg, progress=False).summary
    assert s["errors_by_code"] == {"shard_unreadable": 1} and s["kept"] == len(expected)
    table = pd_read(out / "table")
    err = table[table.nf_status == "error"]
    assert err.source.tolist() == [os.path.abspath(fifo)] and "not a regular file" in err.nf_error.iloc[0]
    written: dict[str, bytes] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".jpg"):
                    written[m.name[:-4]] = tf.extractfile(m).read()
    assert written == {k: v["jpg"] for k, v in expected.items()}


def pd_read(path: Path):
    from nemo_frames.io.parquet import read_parquet

    return read_parquet(str(path)).compute()
