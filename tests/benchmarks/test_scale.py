"""Smoke test of benchmarks/scale.py at its smallest size (10k samples): the corpus, curate, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_scale_benchmark_10k(tmp_path):
    out = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", "10000", "--cache", str(tmp_path / "cache"),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    for row in ("| scan (computed) |", "| score |", "| dedup |", "| export |", "| report |", "| total |",
                "| driver peak RSS (GiB) |", "| Dask tasks |", "| bytes written (GiB) |"):
        assert row in table
    r = json.loads(out.read_text())["10000"]
    assert r["samples_in"] == 10000 and r["samples_scanned"] == 10000 and r["errors"] == 0
    # The corpus plants about 1 % exact and 9 % near duplicates; the dedups find them, and not much else.
    reasons = r["filtered_by_reason"]
    assert 50 <= reasons.get("dedup_exact", 0) <= 200
    removed = sum(v for k, v in reasons.items() if k.startswith("dedup_"))
    assert 600 <= removed <= 1500, reasons
    assert r["kept"] == 10000 - sum(reasons.values())
    # Every kept sample was exported, in shards of 1,000.
    shards = sorted((tmp_path / "cache" / "runs" / "run_10000" / "shards").glob("*.tar"))
    assert len(shards) == -(-r["kept"] // 1000)
    assert r["tasks"] > 0 and r["driver_peak_rss"] > 0 and r["worker_peak_rss"]


@pytest.mark.slow
def test_scale_benchmark_1m_completes_with_flat_cost(tmp_path):
    """The 1M run (~16 min here once the 7.9 GB corpus is built; NF_SCALE_CACHE reuses one)."""
    import os

    cache = Path(os.environ.get("NF_SCALE_CACHE", tmp_path / "cache"))
    out = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", "10000", "1000000", "--cache", str(cache),
         "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=4 * 3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    small, big = r["10000"], r["1000000"]
    assert big["samples_in"] == 1_000_000 and big["errors"] == 0
    assert big["kept"] == 1_000_000 - sum(big["filtered_by_reason"].values())
    assert big["driver_peak_rss"] < 2 * 2**30
    # Cost per sample does not grow with N (a loose bound: the table, not this test, is the measurement).
    per_k = {n: x["seconds"]["total"] / (x["samples_in"] / 1000) for n, x in (("s", small), ("b", big))}
    assert per_k["b"] < 1.5 * per_k["s"], per_k
    assert big["tasks"] / 1000 < 1.2 * small["tasks"] / 10
