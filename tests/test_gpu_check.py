"""The one-call GPU check (scripts/gpu_check.sh): its wheel set, and its --dry-run on this CPU machine."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wheel_set_is_what_the_gpu_machine_lacks(monkeypatch):
    gw = _gpu_wheels()
    assert gw.check_lists() == []
    wheels = gw.wheel_specs()
    assert {"dask", "distributed", "dask-cuda", "open-clip-torch", "simplejpeg", "webdataset"} <= set(wheels)
    # Nothing the machine has (a CPU torch over its CUDA build, a second numpy) is carried.
    assert not {"torch", "torchvision", "numpy", "pandas", "pyarrow", "cupy-cuda13x"} & set(wheels)
    # The check catches a wheel the machine already has, and a requirement covered by neither side.
    monkeypatch.setattr(gw, "machine_packages", lambda: {"dask"} | gw.norm_set(gw.read_list(gw.MACHINE_TXT)))
    assert any(e.startswith("dask: already on the machine") for e in gw.check_lists())
    monkeypatch.setattr(gw, "machine_packages", lambda: gw.norm_set(gw.read_list(gw.MACHINE_TXT)) - {"pyyaml"})
    assert any("pyyaml" in e for e in gw.check_lists())


@pytest.mark.integration
def test_dry_run_writes_the_table(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PY=sys.executable, GPU_CHECK_BUDGET_S="100")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "gpu_check.md").read_text()
    # Every gpu-marked test skipped on CPU with its reason; none failed.
    assert re.search(r"`pytest -m gpu`: \d+ skipped", md), md
    assert "failed" not in md.split("Cluster:")[0]
    assert "no CUDA device" in md
    # The fused pass ran for each precision and decoder, beside the bare loop.
    rows = re.findall(r"^\| nf-tiny-vit \| (fp32|bf16) \| (cpu|nvjpeg) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|$", md, re.M)
    assert sorted((p, d) for p, d, *_ in rows) == [("bf16", "cpu"), ("bf16", "nvjpeg"), ("fp32", "cpu"), ("fp32", "nvjpeg")]
    assert all(float(r[2].replace(",", "")) > 0 and float(r[3].replace(",", "")) > 0 for r in rows)
    # Similarity blocks: torch and numpy agree on the planted duplicates.
    assert re.search(r"^\| cpu \(torch\) \| 3,000 × 64 \| [\d.]+ \| \S+ \| 60 \| [\d.]+× \| yes \|$", md, re.M), md
    assert (out / "gpu_check.json").is_file() and (out / "pytest_gpu.log").is_file()
