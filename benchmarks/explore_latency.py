"""The explorer at 1M rows: start-up, first page, filter change, threshold what-if, server memory.

Builds a synthetic run directory whose ``table/`` has ``--rows`` samples over real shards (the
demo photos from ``scripts/make_demo_data.py``; locators repeat, keys are unique), scores drawn
around the real ones and statuses / reasons assigned by the demo's own filter rules, and a
perceptual duplicates table of ``--rows // 20`` groups. Then it starts ``nemo-frames explore`` in
a subprocess and times HTTP requests against it, the way the page makes them.

Baseline, in the same run: what a notebook does without the explorer (and what ``report.py``
does): ``pd.read_parquet`` of the whole table, then the same filter in pandas, in a subprocess
whose peak memory is measured the same way.

Usage::

    flock /tmp/nf_heavy.lock python benchmarks/explore_latency.py            # 1M rows
    python benchmarks/explore_latency.py --rows 100000 --repeat 3

Prints a markdown table (targets from issue 13: first page < 2 s, filter change < 1 s,
server memory < 1 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, not whichever the venv has installed

FILTERS = [{"name": "blur", "column": "blur_score", "op": ">=", "value": 100.0},
           {"name": "qr", "column": "qr_area_ratio", "op": "<", "value": 0.05},
           {"name": "min_size", "column": "width", "op": ">=", "value": 64.0}]


def build_run(base: Path, rows: int, parts: int) -> Path:
    import importlib.util

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nemo_frames.io.webdataset import read_webdataset

    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    mod.write_shards(base / "data", mod.samples(), 3)
    real = read_webdataset(str(base / "data" / "{00000..00002}.tar")).compute()
    real = real[real["nf_status"] == "ok"].reset_index(drop=True)
    run = base / "run"
    (run / "table").mkdir(parents=True)
    (run / "dedup").mkdir()
    rng = np.random.default_rng(0)
    per = -(-rows // parts)
    first_keys: list[str] = []
    for p in range(parts):
        n = min(per, rows - p * per)
        idx = rng.integers(0, len(real), n)
        src = real.iloc[idx].reset_index(drop=True)
        ids = np.arange(p * per, p * per + n)
        df = pd.DataFrame({
            "key": [f"{k}-{i:07d}" for k, i in zip(src["key"], ids, strict=True)],
            "source": src["source"].astype(str), "image_member": src["image_member"].astype(str),
            "image_offset": src["image_offset"].astype("int64"), "image_size": src["image_size"].astype("int64"),
            "caption": src["caption"].astype(str), "nf_members": src["nf_members"].astype(str),
            "width": rng.integers(32, 1024, n).astype("int32"), "height": rng.integers(32, 1024, n).astype("int32"),
            "blur_score": rng.lognormal(6, 1.5, n).astype("float32"),
            "qr_area_ratio": np.where(rng.random(n) < 0.05, rng.random(n), 0).astype("float32"),
            "aesthetic_score": rng.normal(5, 1, n).astype("float32"), "nsfw_score": rng.random(n).astype("float32"),
            "clip_score": rng.normal(0.28, 0.05, n).astype("float32"),
        })
        status = np.full(n, "ok", object)
        reason = np.full(n, None, object)
        for f in reversed(FILTERS):  # the first failing filter names the reason
            col = df[f["column"]].to_numpy()
            bad = ~(col >= f["value"]) if f["op"] == ">=" else ~(col < f["value"])
            status[bad], reason[bad] = "filtered", [f"{f['name']}: {f['column']}={v:.4g}" for v in col[bad]]
        err = rng.random(n) < 0.002
        status[err], reason[err] = "error", None
        df["nf_status"], df["nf_reason"] = status, reason
        df["nf_error"] = np.where(err, "decode_error: image file is truncated", None)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), run / "table" / f"part.{p}.parquet")
        if len(first_keys) < rows // 10:
            first_keys += df["key"].tolist()
    g = rows // 20
    keys = first_keys[: 2 * g]
    dup = pd.DataFrame({"key": keys, "group_id": [keys[2 * (i // 2)] for i in range(2 * g)],
                        "is_survivor": [i % 2 == 0 for i in range(2 * g)],
                        "max_similarity": rng.uniform(0.8, 1.0, 2 * g), "matched_key": [keys[2 * (i // 2)] for i in range(2 * g)],
                        "method": "perceptual"})
    pq.write_table(pa.Table.from_pandas(dup, preserve_index=False), run / "dedup" / "perceptual.parquet")
    (run / "summary.json").write_text(json.dumps({"filters": FILTERS, "config": {"input": {}}}))
    return run


def rss_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_explorer(run: Path, repeat: int, rows: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nemo_frames.cli", "explore", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if "http://" not in line:
            raise RuntimeError(f"explorer did not start: {line}{proc.stderr.read()}")  # type: ignore[union-attr]
        url = line.split(": ", 1)[1].split()[0]
        startup = time.perf_counter() - t0
        pool = ThreadPoolExecutor(6)  # a browser opens ~6 connections per host

        def first_page(offset: int = 0) -> None:
            json.loads(get(url + "api/meta"))
            page = json.loads(get(url + f"api/samples?offset={offset}&limit=48"))
            list(pool.map(lambda r: get(url + f"api/thumb/{r['nf_row']}?px=160"), page["rows"]))

        out = {"start-up (process start → serving)": startup}
        t = time.perf_counter()
        first_page()
        out["first page, cold (meta + 48 rows + 48 thumbnails)"] = time.perf_counter() - t
        k = iter(range(1, 10**6))
        out["another page (meta + 48 rows + 48 new thumbnails)"] = timed(lambda: first_page(48 * next(k) * 997 % (rows - 48)), repeat)
        filt = ("api/samples?status=filtered&reason=blur&range=aesthetic_score:4:6&q=cat&sort=clip_score&desc=1"
                "&limit=48")
        out["filter change (status+reason+range+text, sorted)"] = timed(lambda: get(url + filt), repeat)
        out["sort change (whole table by a score)"] = timed(lambda: get(url + "api/samples?sort=aesthetic_score&limit=48"), repeat)
        vals = iter(np.linspace(50, 5000, 100))
        out["threshold what-if (counts + 2×12 nearest)"] = timed(
            lambda: get(url + f"api/whatif?column=blur_score&op=%3E%3D&value={next(vals):.2f}"), repeat)
        out["duplicate groups (largest first, 20 groups)"] = timed(lambda: get(url + "api/dups?method=perceptual"), repeat)
        out["server peak RSS (GiB)"] = rss_peak_kib(proc.pid) / 2**20
        return out
    finally:
        proc.terminate()
        proc.wait(30)


_BASELINE = r"""
import sys, time, json, pandas as pd, glob
t = time.perf_counter()
df = pd.read_parquet(sys.argv[1])
load = time.perf_counter() - t
print("loaded", flush=True)
best = 1e9
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    m = (df.nf_status == "filtered") & (df.nf_reason.str.split(":").str[0] == "blur") & df.aesthetic_score.between(4, 6) \
        & df.caption.str.contains("cat", case=False, na=False)
    df[m].sort_values("clip_score", ascending=False).head(48)
    best = min(best, time.perf_counter() - t)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        rss = int(line.split()[1]) / 2**20
print(json.dumps({"load": load, "filter": best, "rss": rss}))
"""


def bench_pandas(run: Path, repeat: int) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _BASELINE, str(run / "table"), str(repeat)],
                            stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # type: ignore[union-attr]
    startup = time.perf_counter() - t0  # process start → table in memory, as for the explorer
    rest, _ = proc.communicate(timeout=600)
    if proc.returncode or not first.startswith("loaded"):
        raise RuntimeError(f"pandas baseline failed: {first}{rest}")
    return {**json.loads(rest.strip().splitlines()[-1]), "startup": startup}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", default=None, help="build the run here and keep it (default: a temporary directory)")
    a = ap.parse_args(argv)
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="nf-explore-bench-"))
    t = time.perf_counter()
    run = build_run(base, a.rows, a.parts) if not (base / "run" / "summary.json").is_file() else base / "run"
    print(f"run with {a.rows:,} rows at {run} ({time.perf_counter() - t:.1f} s to build)", file=sys.stderr)
    ex = bench_explorer(run, a.repeat, a.rows)
    pdb = bench_pandas(run, a.repeat)
    base_of = {"start-up (process start → serving)": pdb["startup"],
               "filter change (status+reason+range+text, sorted)": pdb["filter"], "server peak RSS (GiB)": pdb["rss"]}
    target = {"first page, cold (meta + 48 rows + 48 thumbnails)": "< 2 s",
              "filter change (status+reason+range+text, sorted)": "< 1 s", "server peak RSS (GiB)": "< 1 GiB"}
    print(f"\nExplorer at {a.rows:,} rows (best of {a.repeat}; baseline: pandas, whole table in memory)\n")
    print("| measure | explorer | pandas baseline | explorer / baseline | target |")
    print("|---|---:|---:|---:|---|")
    for k, v in ex.items():
        unit = "" if "GiB" in k else " s"
        b = base_of.get(k)
        bs = f"{b:.3f}{unit}" if b is not None else "—"
        ratio = f"{v / b:.2f}×" if b else "—"
        print(f"| {k} | {v:.3f}{unit} | {bs} | {ratio} | {target.get(k, '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
