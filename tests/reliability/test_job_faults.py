"""Battery item 6: the whole job SIGKILLed at random points and restarted (export with the commit protocol).

Each trial: run the job in a subprocess, SIGKILL its process group at a random moment after it started
working, up to three times, then run it to completion; audit the output (every input key exactly once).
The control runs a naive writer ("output file exists = done") under the same kills: it loses samples.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.reliability._battery import ROOT, record

pytestmark = pytest.mark.integration

JOB = textwrap.dedent(
    """
    import os, sys, time, io, tarfile
    import dask
    from nemo_frames.io.webdataset import read_webdataset
    from nemo_frames.io.export import write_webdataset
    from nemo_frames.scoring import score
    src, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]

    def slow(df):
        time.sleep(0.15)  # spread the work over time so kills land inside it
        return df

    ddf = read_webdataset(src)
    print("go", flush=True)
    if mode == "protocol":
        ddf = ddf.map_partitions(slow)
        with dask.config.set(scheduler="threads", num_workers=2):
            write_webdataset(score(ddf, blur=True, phash=False), out, samples_per_shard=3, progress=False)
    else:  # naive: final names written in place, resume skips every shard whose file exists
        os.makedirs(out, exist_ok=True)
        df = ddf.compute(scheduler="sync")
        from nemo_frames.io.fetch import fetch_members
        ok = df[df.nf_status == "ok"].reset_index(drop=True)
        for s in range(0, len(ok), 3):
            path = os.path.join(out, f"{s // 3:05d}.tar")
            if os.path.exists(path):
                continue
            part = ok.iloc[s:s + 3]
            members, _ = fetch_members(part)
            with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tf:
                for key, m in zip(part.key, members):
                    for ext, data in m.items():
                        ti = tarfile.TarInfo(f"{key}.{ext}"); ti.size = len(data)
                        tf.addfile(ti, io.BytesIO(data)); f.flush()
                    time.sleep(0.06)
    print("done", flush=True)
    """
)


def _run(script: Path, src: Path, out: Path, mode: str, kill_after: float | None) -> bool:
    """Run the job; SIGKILL it ``kill_after`` s after it starts working. True if it was killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, str(script), str(src), str(out), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, start_new_session=True)
    assert p.stdout.readline().strip() == b"go", p.stderr.read().decode()[-2000:]
    if kill_after is None:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
        return False
    deadline = time.monotonic() + kill_after
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
    if p.poll() is not None:
        return False
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return True


def _audit(out: Path) -> list[str]:
    keys = []
    for t in sorted(out.glob("*.tar")):
        try:
            with tarfile.open(t) as tf:
                keys += sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
        except tarfile.TarError:
            pass
    return keys


@pytest.mark.slow
@pytest.mark.parametrize("trials", [pytest.param(1, id="1-trial"), pytest.param(5, id="5-trials")])
def test_job_sigkilled_and_restarted_loses_and_duplicates_nothing(make_shards, tmp_path, trials):
    src, expected = make_shards(n_shards=8, per_shard=4)
    script = tmp_path / "job.py"
    script.write_text(JOB)
    rng = np.random.default_rng(6)
    figures = {"protocol": {"kills": 0, "lost": 0, "dups": 0}, "naive": {"kills": 0, "lost": 0, "dups": 0}}
    for trial in range(trials):
        times = sorted(rng.uniform(0.2, 2.5, size=3).tolist())
        for mode in ("protocol", "naive"):
            out = tmp_path / f"{mode}{trial}"
            for t in times:
                figures[mode]["kills"] += _run(script, src, out, mode, t)
            _run(script, src, out, mode, None)
            keys = _audit(out)
            figures[mode]["lost"] += len(set(expected) - {k for k in keys})
            figures[mode]["dups"] += len(keys) - len(set(keys))
    p, n = figures["protocol"], figures["naive"]
    record("6. job SIGKILLed + restarted (export, commit protocol)", kinds=1, inputs=trials * len(expected),
           trials=trials, kills=p["kills"], crashes=0, silent=p["lost"], lost=p["lost"], duplicates=p["dups"])
    record("6. control: naive 'output exists = done'", kinds=1, inputs=trials * len(expected), trials=trials,
           kills=n["kills"], crashes=0, silent=n["lost"], lost=n["lost"], duplicates=n["dups"])
    assert p["kills"] >= trials and p["lost"] == 0 and p["dups"] == 0, figures
    if n["kills"]:
        assert n["lost"] > 0, figures  # the control must show the loss the protocol prevents
