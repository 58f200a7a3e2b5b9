"""Battery item 11: ``curate`` itself SIGKILLed in each stage and restarted (issue 16, "what must be shown").

Each trial runs ``curate`` in a subprocess whose stages (scan, score, dedup, ledger, export) announce
themselves on stdout; the parent SIGKILLs the process group a random moment after the target stage starts,
then reruns ``curate`` to completion and compares the whole run directory with an uninterrupted run:
the score checkpoint, ``table/``, the dedup tables, every export file (tar / idx / stats bytes, Parquet
content) and the summary's counts. The ledger trial kills a *rerun* of a finished run, so it also checks
that ``summary.json`` was marked incomplete while ``table/`` was being rewritten (issue 16 item 10).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.reliability._battery import ROOT, record
from tests.reliability._digest import export_digest

pytestmark = pytest.mark.integration

STAGES = ("scan", "score", "dedup", "ledger", "export")

# The child: curate with each stage wrapped to announce itself on stdout (and pause briefly, so a kill can
# land at its start as well as inside it). Nothing else is changed: the kill is a real SIGKILL from outside.
JOB = textwrap.dedent(
    """
    import json, sys, time
    import nemo_frames.io.parquet as PQ
    import nemo_frames.pipeline as P

    def announce(stage, fn):
        def wrapped(*a, **kw):
            print(stage, flush=True)
            time.sleep(0.05)
            return fn(*a, **kw)
        return wrapped

    P._scan = announce("scan", P._scan)
    P._score_stage = announce("score", P._score_stage)
    P._dedup = announce("dedup", P._dedup)
    PQ.write_parquet = announce("ledger", PQ.write_parquet)  # curate's only write_parquet: table/
    P._export = announce("export", P._export)
    P._summary = announce("summary", P._summary)  # the end of the export stage (and its cluster)
    P.curate(json.loads(sys.argv[1]), progress=False)
    print("done", flush=True)
    """
)

SUMMARY_KEYS = ("complete", "samples_in", "kept", "filtered", "errors", "filtered_by_reason", "errors_by_code",
                "duplicates_removed", "written")


def _config(src: Path, out: Path) -> dict:
    return {
        "input": {"urls": str(src / "*.tar")},
        "output": str(out),
        "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 2}},
        "score": {"clip": None, "qr": False},
        "filters": [{"blur": 50}],
        "dedup": {"exact": True, "perceptual": {"threshold": 4}},
        "export": {"samples_per_shard": 5, "index": True},
        "report": {"enabled": False},
    }


def _run(cfg: dict, *, script: Path, kill_stage: str | None = None, delay: float = 0.0) -> dict:
    """Run curate; SIGKILL its process group ``delay`` s after ``kill_stage`` starts.

    Returns ``killed``, ``stage`` (the last stage the child had announced when it died, so a kill that
    landed after the next stage began is attributed to that one) and ``times`` (stage → start time).
    """
    p = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         start_new_session=True)
    assert p.stdout is not None and p.stderr is not None
    times: dict[str, float] = {}
    while line := p.stdout.readline():
        stage = line.decode().strip()
        times[stage] = time.monotonic()
        if stage == kill_stage:
            time.sleep(delay)
            if p.poll() is not None:
                break
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            later = p.stdout.read().decode().split()
            return {"killed": True, "stage": later[-1] if later else stage, "times": times}
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, err[-3000:]
    return {"killed": False, "stage": None, "times": times}


def _parquet_dir_digest(d: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for f in sorted(d.glob("*.parquet")):
        df = pq.read_table(f).to_pandas()
        out[f.name] = hashlib.sha256(df.to_json(orient="split").encode()).hexdigest()
    return out


def run_digest(out: Path) -> dict:
    """Everything a run leaves that a user reads, in comparable form."""
    summary = json.loads((out / "summary.json").read_text())
    return {
        "scored": _parquet_dir_digest(out / "scored"),
        "table": _parquet_dir_digest(out / "table"),
        "dedup": _parquet_dir_digest(out / "dedup"),
        "shards": export_digest(out / "shards"),
        "summary": {k: summary.get(k) for k in SUMMARY_KEYS}
        | {"export_shards": summary["export"]["shards"], "tar_bytes": summary["export"]["tar_bytes"]},
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, jpegs):
    """The input (6 shards of real photos, some repeated, so dedup has work) and an uninterrupted run."""
    from tests.conftest import sample_members, write_tar

    base = tmp_path_factory.mktemp("curate_kills")
    src = base / "in"
    src.mkdir()
    names = sorted(jpegs)
    for s in range(6):
        members = []
        for i in range(5):
            key = f"s{s}_{i:02d}"
            members += sample_members(key, jpegs[names[(s * 5 + i) % len(names)]], f"photo {key}", {"i": i})
        write_tar(src / f"{s:05d}.tar", members)
    script = base / "job.py"
    script.write_text(JOB)
    clean = base / "clean"
    res = _run(_config(src, clean), script=script)
    order = [*STAGES, "summary", "done"]
    assert list(res["times"]) == order, res
    # How long each stage lasted in the clean run: kills are drawn inside that window.
    window = {s: res["times"][order[i + 1]] - res["times"][s] for i, s in enumerate(STAGES)}
    return src, script, run_digest(clean), clean, window


def _trial(baseline, out: Path, stage: str, rng: np.random.Generator, *, rerun_first: bool) -> dict:
    src, script, want, clean, window = baseline
    cfg = _config(src, out)
    if rerun_first:
        # Kill a rerun of a finished run (a copy of the clean one): the old summary must not survive as
        # "complete" beside a table/ being rewritten.
        shutil.copytree(clean, out)
    kills: list[str] = []
    summaries = []
    # A kill drawn inside the stage's window can still land after it on a loaded machine: then it counts as
    # a kill in the later stage, and the trial tries again with shorter delays (more kills, same directory).
    for attempt in range(4):
        res = _run(cfg, script=script, kill_stage=stage, delay=float(rng.uniform(0, window[stage])) / 2**attempt)
        if not res["killed"]:
            break
        kills.append(res["stage"])
        summaries.append(json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None)
        if res["stage"] == stage:
            break
    _run(cfg, script=script)
    got = run_digest(out)
    return {"kills": kills, "diffs": [k for k in want if got[k] != want[k]], "summaries": summaries}


def _check(res: dict, stage: str) -> None:
    assert stage in res["kills"], f"no kill landed in {stage}: {res['kills']}"
    assert res["diffs"] == [], f"kill in {stage}: differs from the uninterrupted run in {res['diffs']}"
    for k, s in zip(res["kills"], res["summaries"], strict=True):
        assert s is None or s.get("complete") is False, f"kill in {k}: summary.json claims a complete run: {s}"


def test_curate_killed_in_the_ledger_of_a_rerun_then_restarted_matches_a_clean_run(baseline, tmp_path):
    res = _trial(baseline, tmp_path / "out", "ledger", np.random.default_rng(0), rerun_first=True)
    _check(res, "ledger")
    assert all(s is not None and s["complete"] is False for s in res["summaries"])  # the rerun's old summary
    record("11. curate SIGKILLed + restarted (1 trial: ledger of a rerun)", kinds=1, inputs=30, trials=1,
           kills=len(res["kills"]), crashes=0, lost=0, duplicates=0, silent=0, identical_to_clean=True)


@pytest.mark.slow
def test_curate_killed_in_every_stage_then_restarted_matches_a_clean_run(baseline, tmp_path):
    rng = np.random.default_rng(16)
    kills: list[str] = []
    for t, stage in enumerate(STAGES):  # 5 independent trials, one per stage, every other one a rerun
        res = _trial(baseline, tmp_path / f"t{t}", stage, rng, rerun_first=(t % 2 == 1))
        _check(res, stage)
        kills += res["kills"]
    record("11. curate SIGKILLed + restarted (scan, score, dedup, ledger, export)", kinds=len(STAGES),
           inputs=30 * len(STAGES), trials=len(STAGES), kills=len(kills), crashes=0, lost=0, duplicates=0,
           silent=0, identical_to_clean=True, kills_by_stage=json.dumps(dict(Counter(kills))))
