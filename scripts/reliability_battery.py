"""Run the whole reliability battery (slow parts included) and print one markdown table of figures.

Usage::

    python scripts/reliability_battery.py [--fuzz-seconds 60] [--quick] [-- extra pytest args]

Runs ``tests/reliability`` with every marker (``-m ""``) and ``NF_RELIABILITY_FULL=1`` (10 cases per
corrupt-input kind, every-byte truncation, 300 hypothesis examples), collects the figures each test
records (``NF_RELIABILITY_FIGURES``), runs ``scripts/fuzz_tar.py`` under atheris for ``--fuzz-seconds``,
and prints the table. Exit status: pytest's (non-zero when any contract is broken), or 1 for a fuzz finding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("kinds", "inputs", "crashes", "lost", "duplicates", "silent", "peak_rss_mib", "hangs")
HEAD = ("item", "kinds of bad input", "inputs tried", "crashes", "samples lost", "duplicates", "silent errors",
        "peak RSS (MiB)", "hangs", "notes")
NOTE_KEYS = ("recorded", "good_inputs", "conservative", "lost_recorded", "worker_deaths", "identical_to_clean",
             "kills", "trials", "seconds_to_fail", "published_without_marker", "shard_writes_attempted",
             "written_outside", "unsafe_names_in_output", "executed", "edge_cases", "bombs", "shard_bytes",
             "execs", "errors_by_code", "kills_by_stage", "overlapped")


def run_fuzz(seconds: int) -> dict:
    corpus = Path(tempfile.mkdtemp(prefix="nf-fuzz-"))
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for n, d in [("a.jpg", b"\xff\xd8\xff"), ("a.txt", b"cap"), ("a.json", b'{"x": 1}'), ("b.png", b"x" * 700)]:
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            t.addfile(ti, io.BytesIO(d))
    (corpus / "seed.tar").write_bytes(buf.getvalue())
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz_tar.py"), f"-max_total_time={seconds}", "-rss_limit_mb=1024",
         "-timeout=10", str(corpus)],
        capture_output=True, text=True, cwd=corpus, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=seconds + 300,
    )
    out = p.stdout + p.stderr
    m = re.search(r"Done (\d+) runs", out)
    rss = re.findall(r"rss: (\d+)Mb", out)
    finding = p.returncode != 0
    return {"item": "4. atheris fuzz of the tar reader + scan", "kinds": "coverage-guided",
            "inputs": int(m.group(1)) if m else 0, "crashes": int(finding and "timeout" not in out.lower()),
            "hangs": int("ERROR: libFuzzer: timeout" in out), "silent": 0, "lost": 0, "duplicates": 0,
            "peak_rss_mib": max(map(int, rss)) if rss else None,
            "execs": f"{seconds} s, {time.perf_counter() - t0:.0f} s wall", "tail": out[-1500:] if finding else ""}


def dedupe(rows: list[dict]) -> list[dict]:
    """One row per item: the largest run (a full run also runs the default-size variants)."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["item"] not in best or (r.get("inputs") or 0) > (best[r["item"]].get("inputs") or 0):
            best[r["item"]] = r
    return sorted(best.values(), key=lambda r: r["item"])


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    total = dict.fromkeys(("inputs", "crashes", "lost", "duplicates", "silent", "hangs"), 0)
    for r in rows:
        cells = [r["item"]]
        for c in COLUMNS:
            v = r.get(c)
            cells.append("–" if v is None else str(v))
            if c in total and isinstance(v, int) and not r["item"].startswith("6. control"):
                total[c] += v
        notes = [f"{k}={r[k]}" for k in NOTE_KEYS if k in r and r[k] not in (None, "")]
        cells.append(", ".join(notes).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| **total** | | " + " | ".join(f"**{total[c]}**" for c in ("inputs", "crashes", "lost", "duplicates", "silent"))
                 + " | | " + f"**{total['hangs']}** | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fuzz-seconds", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="default-suite sizes (no NF_RELIABILITY_FULL, no slow tests)")
    ap.add_argument("pytest_args", nargs="*")
    ap.add_argument("--from-figures", help="only print the table of an earlier run's figures file")
    a = ap.parse_args()
    if a.from_figures:
        print(table(dedupe([json.loads(x) for x in Path(a.from_figures).read_text().splitlines()])))
        return 0
    figs = Path(tempfile.mkdtemp(prefix="nf-rel-")) / "figures.jsonl"
    env = {**os.environ, "NF_RELIABILITY_FIGURES": str(figs), "PYTHONPATH": str(ROOT)}
    if not a.quick:
        env["NF_RELIABILITY_FULL"] = "1"
    marker = "not gpu and not slow" if a.quick else ""
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:logging", "-m", marker,
                          *a.pytest_args], cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    if a.fuzz_seconds > 0:
        fz = run_fuzz(a.fuzz_seconds)
        with figs.open("a") as f:
            f.write(json.dumps({k: v for k, v in fz.items() if k != "tail"}) + "\n")
        if fz["crashes"] or fz["hangs"]:
            print(fz["tail"], file=sys.stderr)
            rc = rc or 1
    print()
    print(f"## nemo_frames reliability battery ({seconds:.0f} s of tests, pytest exit {rc}; "
          f"peak RSS of this driver {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MiB over children)")
    print()
    print(table(dedupe([json.loads(line) for line in figs.read_text().splitlines()] if figs.exists() else [])))
    print(f"\n(figures: {figs}; the control row is not counted in the totals)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
