"""The whole pipeline at 10k → 1M samples: cost per sample of every stage, memory, tasks.

Builds (once, cached) a corpus of small real-photo JPEGs — random crops of the photos that ship
with scikit-image and scikit-learn, 64–160 px on the long side so that decode does not dominate,
about 10 % planted near duplicates (the same crop re-encoded at another quality and shifted by a
pixel or two), captions and JSON sidecars that carry a precomputed 64-d embedding (field
``emb``) — in shards of 1,000 samples. Then, for every size N, runs ``curate`` in a fresh
subprocess (scan → score without CLIP: blur, pHash, content hash → filters → exact, perceptual
and semantic dedup (on the sidecar embeddings) → ledger → export → report) on a local cluster
of 2 workers × 1 thread, and prints one table: seconds per 1k samples per stage at each N, the
ratio largest / smallest N, driver and worker peak RSS, Dask tasks, bytes written.

The smallest N is the baseline measured in the same command, so machine load hits every row
alike. Targets (issue 12): per-sample cost of every stage at 1M ≤ 1.15× its cost at 10k;
driver peak RSS < 2 GiB; worker peak RSS independent of N (±10 %); scan ≥ 50 shards/s.

``--resume`` adds the resume-at-scale check at the largest N: ``curate`` is SIGKILLed once in
the middle of scoring and once in the middle of export, rerun, and its output (shards and
table) compared byte for byte with the uninterrupted run; the table reports how many
partitions each rerun redid.

Usage::

    python benchmarks/scale.py                      # 10k and 100k
    python benchmarks/scale.py --sizes 10000 1000000 --resume   # 1M: ~16 min here, ~25 more with --resume
    python benchmarks/scale.py --sizes 2000 --smoke  # the test suite's smoke run

The corpus lives in ``--cache`` (default ``~/.cache/nemo_frames/scale``): 1M samples take
about 5 GB and several minutes to build the first time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_SHARD = 1000
EMB_DIM = 64
STAGES = ("scan (computed)", "scan", "plan", "score", "filter", "dedup", "ledger", "export", "report", "total")
RSS_STAGES = ("scan (computed)", "score", "dedup", "ledger", "export", "report")


# --------------------------------------------------------------------------- corpus
def _photos() -> list[np.ndarray]:
    """Real photos shipped with scikit-image and scikit-learn, as 3-channel BGR (grey ones replicated)."""
    import cv2
    from skimage import data
    from sklearn.datasets import load_sample_images

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "cat", "brick", "camera", "clock", "coins", "grass", "gravel", "moon", "cell"):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # a photo that needs a download on this scikit-image version: skip it
            continue
        if img.dtype != np.uint8:
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR))
    for img in load_sample_images().images:
        out.append(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return out


_PHOTOS: list[np.ndarray] | None = None
_WORDS = ("a photo of the", "close up of", "detail from", "picture showing", "view of", "crop of",
          "colourful", "old", "bright", "dark", "textured", "scene", "object", "surface", "sky", "animal")


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 1_700_000_000
    ti.mode = 0o644
    return ti


def _encode(img: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return jpg.tobytes()


_SCALES = (1.0, 0.7, 0.5, 0.35, 0.25)
_PYRAMID: list[np.ndarray] = []


def _pyramid() -> list[np.ndarray]:
    """Every photo at a few scales, made once per process, so a view is a crop and not a resize."""
    import cv2

    if not _PYRAMID:
        assert _PHOTOS is not None
        for photo in _PHOTOS:
            h, w = photo.shape[:2]
            for sc in _SCALES:
                _PYRAMID.append(photo if sc == 1.0 else cv2.resize(photo, (int(w * sc), int(h * sc)),
                                                                   interpolation=cv2.INTER_AREA))
    return _PYRAMID


def _random_view(rng: np.random.Generator) -> np.ndarray:
    """A 2 × 2 mosaic of random crops of random photos, each flipped / rotated, then tinted; 64–160 px.

    A single crop of one of a few dozen photos would make the corpus grow more genuinely similar
    images as it grows (two crops of the same sky are near duplicates), so the duplicate rate —
    and with it the work of every later stage — would change with N. A mosaic of four independent
    crops makes an accidental match as unlikely as four at once.
    """
    import cv2

    pyr = _pyramid()
    half = int(rng.integers(32, 81))
    tiles = []
    for _ in range(4):
        src = pyr[int(rng.integers(len(pyr)))]
        h, w = src.shape[:2]
        while h <= half or w <= half:  # a small photo at a small scale: take the next larger scale
            src = pyr[int(rng.integers(len(pyr)))]
            h, w = src.shape[:2]
        y, x = int(rng.integers(0, h - half)), int(rng.integers(0, w - half))
        t = np.rot90(src[y : y + half, x : x + half], int(rng.integers(4)))
        tiles.append(t[:, ::-1] if rng.random() < 0.5 else t)
    img = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    gain = rng.uniform(0.75, 1.25, size=3)
    lut = np.clip(np.arange(256)[:, None] * gain[None, :], 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return cv2.LUT(np.ascontiguousarray(img), lut)


def build_shard(args: tuple[str, int]) -> int:
    """Write shard number ``index`` (1,000 samples) into ``root``; deterministic from the index."""
    global _PHOTOS

    root, index = args
    path = Path(root) / f"{index:05d}.tar"
    if path.exists():
        return 0
    if _PHOTOS is None:
        _PHOTOS = _photos()
    rng = np.random.default_rng(index)
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT)
    made: list[tuple[bytes, np.ndarray, np.ndarray]] = []  # (jpeg, small image, embedding) per sample
    for i in range(PER_SHARD):
        key = f"{index:05d}{i:04d}"
        u = rng.random()
        if made and u < 0.01:
            # Planted exact duplicate: the same bytes (and vector) as an earlier sample.
            jpg, small, emb = made[int(rng.integers(len(made)))]
        elif made and u < 0.10:
            # Planted near duplicate: an earlier image shifted by a pixel or two and re-encoded at
            # another quality; its vector is the original's plus a little noise.
            _, small0, emb0 = made[int(rng.integers(len(made)))]
            dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
            small = np.roll(small0, (dy, dx), axis=(0, 1))
            jpg = _encode(small, int(rng.integers(70, 95)))
            emb = emb0 + rng.normal(0, 0.004, EMB_DIM).astype(np.float32)
        else:
            small = _random_view(rng)
            jpg = _encode(small, 90)
            emb = rng.normal(0, 1, EMB_DIM).astype(np.float32)
        made.append((jpg, small, emb))
        emb = emb / np.linalg.norm(emb)
        caption = " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 9)))).strip()
        side_json = {
            "caption": caption,
            "url": f"https://example.com/img/{key}.jpg",
            "similarity": round(float(rng.random()), 4),
            "emb": [round(float(v), 5) for v in emb],
        }
        for ext, payload in (("jpg", jpg), ("txt", caption.encode()), ("json", json.dumps(side_json).encode())):
            tf.addfile(_tarinfo(f"{key}.{ext}", len(payload)), io.BytesIO(payload))
    tf.close()
    tmp = path.with_suffix(".tar.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return 1


def build_corpus(cache: Path, n: int, workers: int = 2) -> Path:
    """Shards ``00000.tar`` … for ``n`` samples under ``cache/shards`` (shared by every N)."""
    root = cache / "shards"
    root.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, n // PER_SHARD)
    todo = [(str(root), i) for i in range(n_shards) if not (root / f"{i:05d}.tar").exists()]
    if todo:
        t0 = time.perf_counter()
        print(f"building {len(todo)} shard(s) of {PER_SHARD} samples in {root} ...", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(workers) as ex:
            for _ in ex.map(build_shard, todo, chunksize=4):
                pass
        print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return root


# --------------------------------------------------------------------------- one run
def run_config(shards: Path, n: int, out: Path) -> dict[str, Any]:
    n_shards = max(1, n // PER_SHARD)
    return {
        "input": {"urls": f"{shards}/{{00000..{n_shards - 1:05d}}}.tar"},
        "output": str(out),
        "cluster": {"kind": "local", "options": {"n_workers": 2, "threads_per_worker": 1}},
        "score": {"blur": True, "qr": False, "phash": True, "content_hash": True, "clip": None,
                  "embedding_field": "emb"},
        "filters": [{"blur": 20}, {"min_size": 64}],
        "dedup": {"exact": True, "perceptual": {"threshold": 6},
                  "semantic": {"eps": 0.002, "n_clusters": max(2, n // 2000)}},
        "export": {"samples_per_shard": PER_SHARD, "index": True},
        "report": {"enabled": True, "per_grid": 16},
    }


class _RssWatch:
    """Peak RSS of this process (the driver) and of each Dask worker process, per pipeline stage."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.stage = "start"
        self.driver: dict[str, int] = {}
        self.workers: dict[str, dict[int, int]] = {}
        self.interval = interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        st = self.stage
        self.driver[st] = max(self.driver.get(st, 0), self.me.memory_info().rss)
        peaks = self.workers.setdefault(st, {})
        for ch in self.me.children(recursive=True):
            try:
                cmd = " ".join(ch.cmdline())
                rss = ch.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "spawn_main" in cmd or "forkserver" in cmd:  # worker processes, not the resource tracker
                peaks[ch.pid] = max(peaks.get(ch.pid, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> _RssWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def child_main(cfg_path: str, result_path: str) -> None:
    """In a fresh process: start the cluster, count tasks, run curate, write the measurements."""
    import contextlib
    import resource

    from distributed.diagnostics.plugin import SchedulerPlugin

    import nemo_frames.report as report_mod
    from nemo_frames import pipeline, progress
    from nemo_frames.cluster import get_client
    from nemo_frames.io.webdataset import read_webdataset

    class TaskCount(SchedulerPlugin):
        name = "nf-task-count"

        def __init__(self) -> None:
            self.done = 0

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
            if start == "processing" and finish == "memory":
                self.done += 1

    cfg = json.loads(Path(cfg_path).read_text())
    watch = _RssWatch()
    plain_call = progress.StageTimer.__call__

    @contextlib.contextmanager
    def tracked(self: Any, stage: str) -> Any:
        watch.sample()
        watch.stage = stage
        try:
            with plain_call(self, stage):
                yield
        finally:
            watch.sample()
            watch.stage = "between"

    progress.StageTimer.__call__ = tracked  # type: ignore[method-assign]
    plain_report = report_mod.write_report

    def tracked_report(*a: Any, **k: Any) -> Any:
        watch.sample()
        watch.stage = "report"
        try:
            return plain_report(*a, **k)
        finally:
            watch.sample()
            watch.stage = "between"

    report_mod.write_report = tracked_report  # type: ignore[assignment]
    with watch, get_client("local", **cfg["cluster"]["options"]) as client:
        client.register_plugin(TaskCount())
        # The scan stage of curate only builds the lazy table (the reading happens inside the score
        # pass), so the scan is also timed on its own here: read every tar header and sidecar.
        first = sorted(Path(cfg["input"]["urls"].split("{")[0]).glob("*.tar"))[:2]
        client.compute(read_webdataset([str(p) for p in first]).map_partitions(len), sync=True)  # warm-up
        if os.environ.get("NF_SCALE_SKIP_SCAN"):  # the resume check's runs: only curate matters
            first = []
        watch.stage = "scan (computed)"
        scan_s = packed_s = 0.0
        n_scanned = 0
        if first:
            t0 = time.perf_counter()
            scanned = read_webdataset(cfg["input"]["urls"])
            n_scanned = int(sum(client.compute(scanned.map_partitions(len), sync=True)))
            scan_s = time.perf_counter() - t0
            del scanned
            # The same scan with small shards packed 4 to a partition (input.partition_bytes): the
            # per-task cost of Dask is paid a quarter as often.
            t0 = time.perf_counter()
            packed = read_webdataset(cfg["input"]["urls"], partition_bytes=4 * first[0].stat().st_size + 1)
            n_packed = int(sum(client.compute(packed.map_partitions(len), sync=True)))
            packed_s = time.perf_counter() - t0
            assert n_packed == n_scanned, (n_packed, n_scanned)
            del packed
        watch.stage = "between"
        tasks_before = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["nf-task-count"].done)
        t0 = time.perf_counter()
        res = pipeline.curate(cfg, client=client, progress=False)
        wall = time.perf_counter() - t0
        tasks = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["nf-task-count"].done)
    out = Path(cfg["output"])
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and "semantic_work" not in f.parts)
    seconds = dict(res.summary["seconds"])
    seconds["scan (computed)"] = scan_s
    seconds["scan (computed, 4 shards a partition)"] = packed_s
    Path(result_path).write_text(json.dumps({
        "seconds": seconds,
        "wall": wall,
        "samples_in": res.summary["samples_in"],
        "samples_scanned": n_scanned,
        "kept": res.summary["kept"],
        "filtered_by_reason": res.summary["filtered_by_reason"],
        "errors": res.summary["errors"],
        "driver_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "driver_rss_by_stage": watch.driver,
        "worker_rss_by_stage": {k: max(v.values()) if v else 0 for k, v in watch.workers.items()},
        "worker_peak_rss": sorted(max((v.get(pid, 0) for v in watch.workers.values()), default=0)
                                  for pid in {p for v in watch.workers.values() for p in v}),
        "tasks": tasks - tasks_before,
        "bytes_written": written,
        "score": res.summary.get("score", {}),
    }))


def run_once(shards: Path, n: int, work: Path, *, fresh: bool = True) -> dict[str, Any]:
    out = work / f"run_{n}"
    if fresh and out.exists():
        import shutil

        shutil.rmtree(out)
    cfg_path = work / f"config_{n}.json"
    cfg_path.write_text(json.dumps(run_config(shards, n, out)))
    res_path = work / f"result_{n}.json"
    res_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(cfg_path), str(res_path)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"curate at N={n} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    r = json.loads(res_path.read_text())
    r["process_wall"] = time.perf_counter() - t0
    return r


# --------------------------------------------------------------------------- resume check
def _digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every exported shard and index, and of the Parquet rows (the run directory's own path,
    which the exported Parquet records as each sample's new ``source``, replaced by a placeholder)."""
    import pandas as pd
    import pyarrow.parquet as pq

    def rows(t: Any) -> str:
        df = t.to_pandas().astype(str).replace(str(run_dir), "<RUN>", regex=True)
        df = df.sort_values("key", kind="stable").reset_index(drop=True)
        return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()

    out = {}
    for f in sorted((run_dir / "shards").glob("*")):
        if f.suffix in (".tar", ".idx"):
            out[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
        elif f.suffix == ".parquet":
            out[f.name] = rows(pq.read_table(f))
    out["table"] = rows(pq.read_table(run_dir / "table"))
    return out


def _kill_when(cfg_path: Path, res_path: Path, watch_dir: Path, pattern: str, at: int) -> bool:
    """Start curate; SIGKILL its whole process group once ``at`` files match ``pattern``. True if killed."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(cfg_path), str(res_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "NF_SCALE_SKIP_SCAN": "1"})
    while proc.poll() is None:
        if watch_dir.is_dir() and len(list(watch_dir.glob(pattern))) >= at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.2)
    return False


def _markers(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.json")} if d.is_dir() else {}


def resume_check(shards: Path, n: int, work: Path, reference: Path) -> list[tuple[str, str]]:
    """SIGKILL curate in scoring, rerun and SIGKILL it in export, rerun to the end; compare with ``reference``."""
    import shutil

    n_parts = max(1, n // PER_SHARD)
    out = work / f"resume_{n}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = run_config(shards, n, out)
    cfg_path = work / f"config_resume_{n}.json"
    cfg_path.write_text(json.dumps(cfg))
    res_path = work / f"result_resume_{n}.json"
    rows = []
    score_done, export_done = out / "scored" / "_done", out / "shards" / "_done"
    killed = _kill_when(cfg_path, res_path, score_done, "*.json", max(1, n_parts // 2))
    at_kill1 = _markers(score_done)
    rows.append(("SIGKILL during score", f"{'killed' if killed else 'finished first'}: {len(at_kill1)} of {n_parts} "
                 "partitions committed"))
    killed = _kill_when(cfg_path, res_path, export_done, "*.json", max(1, n_parts // 8))
    at_kill2 = _markers(export_done)
    after2 = _markers(score_done)
    redone = sum(1 for k, t in at_kill1.items() if after2.get(k) != t)
    rows.append(("rerun, SIGKILL during export", f"{'killed' if killed else 'finished first'}: scored the other "
                 f"{len(after2) - len(at_kill1)} partitions, rescored {redone} committed ones; "
                 f"{len(at_kill2)} shards exported"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", str(cfg_path), str(res_path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "NF_SCALE_SKIP_SCAN": "1"})
    final = _markers(export_done)
    rewritten = sum(1 for k, t in at_kill2.items() if final.get(k) != t)
    r = json.loads(res_path.read_text())
    rows.append(("rerun to completion", f"{time.perf_counter() - t0:.0f} s: rescored {r['score'].get('scored')} "
                 f"partitions, exported {len(final) - len(at_kill2)} more shards, rewrote {rewritten} committed ones"))
    same = _digest(out) == _digest(reference)
    rows.append(("output (shards, idx, Parquet, table) identical to the uninterrupted run", "yes" if same else "NO"))
    return rows


# --------------------------------------------------------------------------- table
def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def table(results: dict[int, dict[str, Any]]) -> str:
    sizes = sorted(results)
    lo, hi = sizes[0], sizes[-1]
    head = ["stage"] + [f"s/1k @ {n:,}" for n in sizes] + ([f"ratio {hi:,}/{lo:,}"] if len(sizes) > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def per_k(n: int, stage: str) -> float:
        return results[n]["seconds"].get(stage, 0.0) / (results[n]["samples_in"] / 1000)

    for st in STAGES:
        vals = [per_k(n, st) for n in sizes]
        row = [st] + [f"{v:.4f}" for v in vals]
        if len(sizes) > 1:
            row.append(f"{vals[-1] / vals[0]:.2f}x" if vals[0] > 0 else "-")
        lines.append("| " + " | ".join(row) + " |")

    def other(label: str, fn: Any, ratio: bool = True) -> None:
        vals = [fn(results[n]) for n in sizes]
        row = [label] + [str(v) for v in vals]
        if len(sizes) > 1:
            try:
                row.append(f"{float(vals[-1]) / float(vals[0]):.2f}x" if ratio else "-")
            except (TypeError, ValueError, ZeroDivisionError):
                row.append("-")
        lines.append("| " + " | ".join(row) + " |")

    other("samples in", lambda r: r["samples_in"], ratio=False)
    other("kept", lambda r: r["kept"], ratio=False)
    other("driver peak RSS (GiB)", lambda r: _gib(r["driver_peak_rss"]))
    for st in RSS_STAGES:
        other(f"driver peak RSS in {st} (GiB)", lambda r, st=st: _gib(r["driver_rss_by_stage"].get(st, 0)))
    other("worker peak RSS, max (GiB)", lambda r: _gib(max(r["worker_peak_rss"] or [0])))
    for st in RSS_STAGES:
        other(f"worker peak RSS in {st} (GiB)", lambda r, st=st: _gib(r["worker_rss_by_stage"].get(st, 0)))
    other("Dask tasks", lambda r: r["tasks"])
    other("Dask tasks per 1k samples", lambda r: f"{r['tasks'] / (r['samples_in'] / 1000):.1f}")
    other("bytes written (GiB)", lambda r: _gib(r["bytes_written"]))
    other("scan rate, computed (shards/s)",
          lambda r: f"{(r['samples_in'] / PER_SHARD) / max(r['seconds']['scan (computed)'], 1e-9):.0f}", ratio=False)
    other("scan rate, 4 shards a partition (shards/s)",
          lambda r: (f"{(r['samples_in'] / PER_SHARD) / s:.0f}"
                     if (s := r["seconds"].get("scan (computed, 4 shards a partition)")) else "-"), ratio=False)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("NF_SCALE_CACHE", "~/.cache/nemo_frames/scale")).expanduser())
    ap.add_argument("--work", type=Path, default=None, help="run directories (default: <cache>/runs)")
    ap.add_argument("--resume", action="store_true", help="also SIGKILL/rerun at the largest N and compare outputs")
    ap.add_argument("--smoke", action="store_true", help="tiny shards for the test suite (100 samples per shard)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    ap.add_argument("--bracket", action="store_true",
                    help="run the smallest N again after the largest, to show how much the machine's load moved")
    ap.add_argument("--resume-only", type=int, default=None, metavar="N",
                    help="only the resume check at N, against the uninterrupted run already in <work>/run_N")
    ap.add_argument("--build-only", action="store_true", help="build (or complete) the corpus for the largest size, then stop")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    global PER_SHARD
    if a.child:
        child_main(*a.child)
        return 0
    if a.smoke:
        PER_SHARD = 100
        a.cache = a.cache / "smoke"
    sizes = sorted(a.sizes)
    if a.resume_only:
        work = a.work or a.cache / "runs"
        shards = build_corpus(a.cache, a.resume_only)
        rows = resume_check(shards, a.resume_only, work, work / f"run_{a.resume_only}")
        print(f"\nresume at N={a.resume_only:,}\n\n| step | result |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        return 0
    shards = build_corpus(a.cache, sizes[-1])
    if a.build_only:
        return 0
    work = a.work or a.cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for n in sizes:
        print(f"curate at N={n:,} ...", file=sys.stderr, flush=True)
        results[n] = run_once(shards, n, work)
        print(f"  {results[n]['wall']:.1f} s", file=sys.stderr, flush=True)
    again = None
    if a.bracket and len(sizes) > 1:
        print(f"curate at N={sizes[0]:,} again ...", file=sys.stderr, flush=True)
        again = run_once(shards, sizes[0], work)
    print(f"\nbenchmarks/scale.py — {PER_SHARD} samples per shard, local cluster 2 workers x 1 thread\n")
    print(table(results))
    if again is not None:
        n0 = sizes[0]
        print(f"\nbracket: N={n0:,} run again after the largest N (same machine, later load)\n")
        print(f"| stage | s/1k @ {n0:,}, first | s/1k @ {n0:,}, again | s/1k @ {sizes[-1]:,} | ratio vs the faster {n0:,} run |")
        print("|---|---|---|---|---|")
        for st in STAGES:
            v1, v2, vn = (r["seconds"].get(st, 0.0) / (r["samples_in"] / 1000) for r in (results[n0], again, results[sizes[-1]]))
            best = min(v1, v2)
            print(f"| {st} | {v1:.4f} | {v2:.4f} | {vn:.4f} | {vn / best:.2f}x |" if best > 0 else f"| {st} | {v1:.4f} | {v2:.4f} | {vn:.4f} | - |")
    if a.resume:
        n = sizes[-1]
        rows = resume_check(shards, n, work, work / f"run_{n}")
        print(f"\nresume at N={n:,}\n\n| step | result |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
    if a.json:
        raw = {str(k): v for k, v in results.items()}
        if again is not None:
            raw[f"{sizes[0]}_again"] = again
        a.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        # The child re-reads PER_SHARD from its config's shard count; only the driver needs argparse.
        i = sys.argv.index("--child")
        child_main(sys.argv[i + 1], sys.argv[i + 2])
        raise SystemExit(0)
    raise SystemExit(main())
