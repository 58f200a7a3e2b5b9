"""The GPU check's measurements: fused score pass vs a bare model loop, and similarity blocks CUDA vs CPU.

Run through ``scripts/gpu_check.sh OUT_DIR`` on a lent GPU machine (it installs the carried wheels and
runs ``pytest -m gpu`` first), or ``--dry-run`` on CPU with tiny sizes, as the test suite does.

What it measures (all timings wall clock, in this one run):

1. **Fused pass** (``nemo_frames.score``: fetch from tar + decode + preprocess + CLIP) on a one-GPU Dask
   cluster (``dask_cuda.LocalCUDACluster`` without RMM when it starts, else a ``LocalCluster`` pinned to
   GPU 0; the table says which), for each model × precision × decoder: ``cpu`` (the libjpeg-turbo fast path
   on the worker's threads, one per core) and ``nvjpeg`` (torchvision ``decode_jpeg`` on the GPU). Random
   weights: speed does not depend on the values.
2. **Bare loop**: the same open_clip model, precision and batch size, ``encode_image`` over tensors
   already decoded, preprocessed and on the device: the ceiling the fused pass is compared with.
3. **Similarity blocks**: ``nemo_frames.dedup.semantic.pair_pass`` (the semantic-dedup block function)
   on 200k × 768 unit vectors with planted near-duplicates, torch on CUDA vs numpy on CPU (the CPU side
   on fewer rows, compared per pair), and the edges of both on the shared rows must be equal.

Writes ``gpu_check.md`` (one Markdown table per part, plus the environment) and ``gpu_check.json``
to OUT_DIR. A time budget (``--budget-s``) skips what would not fit, and says so in the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import sys
import tarfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Plan:
    """Sizes of one run (the GPU defaults, or tiny ones for ``--dry-run``)."""

    device: str = "cuda"
    models: list[str] = field(default_factory=lambda: ["ViT-B-32", "ViT-L-14"])
    precisions: list[str] = field(default_factory=lambda: ["bf16", "fp16"])
    decoders: list[str] = field(default_factory=lambda: ["cpu", "nvjpeg"])
    images: int = 6144
    shards: int = 32  # 192 images each: two full waves of 16 worker threads
    sizes: tuple[tuple[int, int], ...] = ((640, 480), (1024, 768), (800, 600), (500, 375))
    batch: int = 256
    threads: int = 16
    bare_images: int = 2048
    sim_rows: int = 200_000
    sim_cpu_rows: int = 50_000
    sim_dim: int = 768
    sim_eps: float = 0.05
    budget_s: float = 400.0

    @classmethod
    def dry(cls) -> Plan:
        return cls(device="cpu", models=["nf-tiny-vit"], precisions=["fp32", "bf16"], images=32, shards=2,
                   sizes=((320, 240), (240, 320)), batch=8, threads=2, bare_images=16, sim_rows=3000,
                   sim_cpu_rows=1500, sim_dim=64, budget_s=120.0)


# --------------------------------------------------------------------------- corpus
def _photos() -> list[np.ndarray]:
    """Real RGB photos that ship inside scikit-image (no download; the GPU machine has no network)."""
    import skimage.data as d

    imgs = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.stereo_motorcycle()[0], d.hubble_deep_field()]
    return [np.ascontiguousarray(i[..., :3]) for i in imgs]


def build_corpus(out: Path, plan: Plan) -> list[bytes]:
    """``plan.images`` real-photo JPEGs (web sizes, varied crops) in ``plan.shards`` WebDataset tars."""
    import cv2

    base = _photos()
    rng = np.random.default_rng(0)
    jobs = [(base[i % len(base)], plan.sizes[i % len(plan.sizes)], int(rng.integers(0, 48)), int(rng.integers(80, 96)))
            for i in range(plan.images)]

    def encode(job: tuple[np.ndarray, tuple[int, int], int, int]) -> bytes:
        img, (w, h), off, q = job
        img = np.ascontiguousarray(img[off:, off:])
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok
        return buf.tobytes()

    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        jpegs = list(pool.map(encode, jobs))
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(jpegs) // plan.shards)
    for s in range(plan.shards):
        with tarfile.open(out / f"{s:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(s * per, min(len(jpegs), (s + 1) * per)):
                for ext, data in (("jpg", jpegs[i]), ("txt", f"photo number {i}".encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return jpegs


# --------------------------------------------------------------------------- environment
def environment(plan: Plan) -> dict[str, Any]:
    import importlib.metadata as md
    import importlib.util

    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    for name in ("torch", "torchvision", "open_clip_torch", "dask", "distributed", "dask-cuda", "numpy", "pandas"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = "not installed"
    env["rapids (cudf, cuml, rmm)"] = ", ".join(
        f"{m}: {'yes' if importlib.util.find_spec(m) else 'no'}" for m in ("cudf", "cuml", "rmm"))
    env["nvidia.dali"] = "yes" if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali") else "no"
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
    else:
        env["gpu"] = "none (CPU dry run)" if plan.device == "cpu" else "none: torch sees no CUDA device"
    from nemo_frames.models.clip import resolve_precision

    c = resolve_precision("auto", plan.device)
    env["precision auto"] = f"{c.precision} ({c.reason})"
    return env


# --------------------------------------------------------------------------- cluster
def start_cluster(plan: Plan) -> tuple[Any, str]:
    """A one-GPU Dask client and a line saying which kind it is."""
    from nemo_frames.cluster import GpuOptions, get_client

    if plan.device == "cpu":
        # In-process threads: the dry run checks the code path, not worker start-up (seconds on 2 cores).
        return (get_client("local", n_workers=1, threads_per_worker=plan.threads, torch_threads=1, processes=False),
                f"LocalCluster of threads, 1 worker × {plan.threads} threads (CPU dry run)")
    try:
        opts = GpuOptions(devices="0", rmm_pool_size=None, enable_cudf_spill=False, torch_on_rmm=False,
                          cupy_on_rmm=False, extra={"threads_per_worker": plan.threads})
        client = get_client("gpu", gpu=opts)
        client.wait_for_workers(1, timeout=120)
        return client, f"dask_cuda.LocalCUDACluster (no RMM), 1 worker × {plan.threads} threads"
    except Exception as exc:  # dask-cuda missing or failing without RAPIDS: the fallback is the point
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        client = get_client("local", n_workers=1, threads_per_worker=plan.threads, torch_threads=1)
        return client, f"LocalCluster pinned to GPU 0, 1 worker × {plan.threads} threads (LocalCUDACluster failed: {why})"


def _load_on_worker(clip: dict[str, Any]) -> str:
    from nemo_frames.models.clip import get_embedder

    emb = get_embedder(**clip)
    h, w = emb.preprocess_params().image_size
    emb.embed_images(np.zeros((2, 3, h, w), np.float32))
    return f"{emb.device}/{emb.precision}"


def _free_worker() -> None:
    import gc

    from nemo_frames.models.clip import clear_embedder_cache

    clear_embedder_cache()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def fused_pass(client: Any, shards: Path, clip: dict[str, Any], decoder: str, n: int, plan: Plan) -> float:
    """Images/s of one timed fused pass (after an untimed warm-up pass over 4 partitions)."""
    from nemo_frames.io.webdataset import read_webdataset
    from nemo_frames.scoring import score

    df = read_webdataset(str(shards / "*.tar"))
    kw = {"clip": clip, "blur": False, "phash": False, "content_hash": False, "decoder": decoder}
    # Warm-up: every worker thread's first decode (nvJPEG handles, libjpeg tables) and CUDA kernels.
    warm = score(df.partitions[: min(df.npartitions, 4)], **kw)
    client.compute(warm).result()
    t = time.perf_counter()
    out = client.compute(score(df, **kw)).result()
    dt = time.perf_counter() - t
    ok = int((out.nf_status == "ok").sum())
    if ok != n:
        errs = out.loc[out.nf_status != "ok", "nf_error"].head(3).tolist()
        raise RuntimeError(f"fused pass scored {ok} of {n} images ok; first errors: {errs}")
    return n / dt


class Bare:
    """open_clip's own model over pre-decoded, preprocessed tensors already on the device."""

    def __init__(self, model: str, jpegs: list[bytes], plan: Plan) -> None:
        import open_clip
        import torch
        from PIL import Image

        from nemo_frames.models.clip import register_model_configs

        register_model_configs()
        self.model_fp32, _, pre = open_clip.create_model_and_transforms(model, pretrained=None)
        self.model_fp32.eval()
        n = min(plan.bare_images, len(jpegs), 256)  # PIL decode + bicubic is slow: repeat a few hundred
        x = torch.stack([pre(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs[:n]])
        reps = -(-plan.bare_images // n)
        self.x = x.repeat(reps, 1, 1, 1)[: plan.bare_images]
        self.plan = plan

    def images_per_s(self, precision: str) -> float:
        import copy

        import torch

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        dev = torch.device(self.plan.device)
        model = copy.deepcopy(self.model_fp32).to(dev, dtype)
        x = self.x.to(dev, dtype)
        bs = self.plan.batch

        def run(model: Any, x: Any) -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for s in range(0, len(x), bs):
                    torch.nn.functional.normalize(model.encode_image(x[s : s + bs]).float(), dim=-1)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            return len(x) / (time.perf_counter() - t)

        with torch.inference_mode():
            model.encode_image(x[:bs])
        best = max(run(model, x) for _ in range(2))
        del model, x
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return best


def measure_models(plan: Plan, shards: Path, jpegs: list[bytes], t_end: float) -> tuple[str, list[dict[str, Any]]]:
    client, kind = start_cluster(plan)
    rows: list[dict[str, Any]] = []
    try:
        for model in plan.models:
            bare = None
            bare_rate: dict[str, float] = {}
            for precision in plan.precisions:
                clip = {"model": model, "pretrained": None, "device": plan.device, "precision": precision,
                        "batch_size": plan.batch}
                for decoder in plan.decoders:
                    row: dict[str, Any] = {"model": model, "precision": precision, "decoder": decoder}
                    rows.append(row)
                    if time.monotonic() > t_end:
                        row["error"] = "skipped: time budget spent"
                        continue
                    try:
                        if decoder == plan.decoders[0]:
                            # One model in GPU memory at a time; loaded by a task, on a worker thread, as a
                            # real run loads it (the timed pass then finds it in the per-worker cache).
                            client.run(_free_worker)
                            workers = list(client.scheduler_info()["workers"])
                            client.gather([client.submit(_load_on_worker, clip, workers=[w], pure=False)
                                           for w in workers])
                        row["fused"] = fused_pass(client, shards, clip, decoder, len(jpegs), plan)
                        if bare is None:
                            bare = Bare(model, jpegs, plan)
                        if precision not in bare_rate:
                            bare_rate[precision] = bare.images_per_s(precision)
                        row["bare"] = bare_rate[precision]
                        row["ratio"] = row["fused"] / row["bare"]
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                        traceback.print_exc()
                    print(f"  {row}", flush=True)
    finally:
        client.close()
    return kind, rows


# --------------------------------------------------------------------------- similarity
def planted_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors with every 50th row a near-copy (cosine ~0.99) of the row before it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    dup = np.arange(1, n, 50)
    x[dup] = x[dup - 1] + 0.1 * rng.standard_normal((len(dup), d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def measure_similarity(plan: Plan, t_end: float) -> list[dict[str, Any]]:
    from nemo_frames.dedup.semantic import pair_pass

    thr = 1 - plan.sim_eps
    x = planted_vectors(plan.sim_rows, plan.sim_dim)
    rows = []
    engines = [("torch", "cuda" if plan.device == "cuda" else "cpu (torch)", plan.sim_rows),
               ("numpy", "cpu (numpy BLAS)", plan.sim_cpu_rows)]
    edges: dict[str, Any] = {}
    for sim, where, n in engines:
        row: dict[str, Any] = {"engine": where, "rows": n, "dim": plan.sim_dim}
        rows.append(row)
        if time.monotonic() > t_end:
            row["error"] = "skipped: time budget spent"
            continue
        pair_pass(x[:2048], thr, similarity=sim)  # warm-up (CUDA context, BLAS threads)
        t = time.perf_counter()
        i, j, _, _, _ = pair_pass(x[:n], thr, similarity=sim)
        row["seconds"] = time.perf_counter() - t
        row["pairs_per_s"] = n * (n - 1) / 2 / row["seconds"]
        row["edges"] = len(i)
        m = plan.sim_cpu_rows
        keep = (i < m) & (j < m)
        edges[sim] = (i[keep], j[keep])
    if len(edges) == 2:
        (a_i, a_j), (b_i, b_j) = edges["torch"], edges["numpy"]
        same = {(int(p), int(q)) for p, q in zip(a_i, a_j, strict=True)} == {
            (int(p), int(q)) for p, q in zip(b_i, b_j, strict=True)}
        rows[0]["same_edges_on_shared_rows"] = same
        rows[0]["speedup_per_pair"] = rows[0]["pairs_per_s"] / rows[1]["pairs_per_s"]
    return rows


# --------------------------------------------------------------------------- report
def pytest_summary(log: Path | None) -> tuple[str, list[str]]:
    if log is None or not log.is_file():
        return "not run", []
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    skips = [ln.strip() for ln in text.splitlines() if ln.startswith(("SKIPPED", "FAILED", "ERROR"))]
    return (lines[-1].strip("= ") if lines else "no summary line (see pytest_gpu.log)"), skips


def markdown(report: dict[str, Any]) -> str:
    out = [f"# GPU check ({'dry run, CPU' if report['dry_run'] else 'GPU'}), {report['date']}", ""]
    out += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report["environment"].items()]
    out += ["", f"`pytest -m gpu`: {report['pytest']}", ""] + [f"- {s}" for s in report["pytest_skips"]]
    out += ["", f"Cluster: {report['cluster']}", "",
            f"Fused pass: {report['images']} real-photo JPEGs ({report['sizes']}) in {report['shards']} shards, "
            f"batch {report['batch']}, random weights; bare loop: same model over {report['bare_images']} "
            "pre-decoded tensors on the device.", "",
            "| model | precision | decode | fused pass img/s (fetch+decode+preprocess+embed) | bare loop img/s | fused / bare |",
            "|---|---|---|---:|---:|---:|"]
    for r in report["models"]:
        if "error" in r:
            out.append(f"| {r['model']} | {r['precision']} | {r['decoder']} | {r['error']} | | |")
        else:
            out.append(f"| {r['model']} | {r['precision']} | {r['decoder']} | {r['fused']:,.0f} | {r['bare']:,.0f} | "
                       f"{r['ratio']:.2f} |")
    target = next((r for r in report["models"] if (r["model"], r["precision"], r["decoder"]) == ("ViT-L-14", "bf16", "nvjpeg")), None)
    if target is not None and "fused" in target:
        met = target["fused"] >= 2500 and target["ratio"] >= 0.9
        out += ["", f"Target (one H200, ViT-L/14 bf16, GPU decode: ≥ 2,500 img/s and ≥ 0.9× the bare loop): "
                f"{target['fused']:,.0f} img/s, {target['ratio']:.2f}× — {'met' if met else '**not met**'}"]
    out += ["", f"Similarity blocks (`pair_pass`, threshold {1 - report['sim_eps']:.2f}, block 1024):", "",
            "| engine | rows × dim | seconds | pairs/s | edges | speed-up per pair | same edges on shared rows |",
            "|---|---|---:|---:|---:|---:|---|"]
    for r in report["similarity"]:
        if "error" in r:
            out.append(f"| {r['engine']} | {r['rows']:,} × {r['dim']} | {r['error']} | | | | |")
        else:
            sp = f"{r['speedup_per_pair']:.1f}×" if "speedup_per_pair" in r else "1 (baseline)"
            same = {True: "yes", False: "**no**"}.get(r.get("same_edges_on_shared_rows"), "")
            out.append(f"| {r['engine']} | {r['rows']:,} × {r['dim']} | {r['seconds']:.2f} | {r['pairs_per_s']:.3g} | "
                       f"{r['edges']:,} | {sp} | {same} |")
    out += ["", f"Wall time of the measurements: {report['wall_s']:.0f} s "
            f"({', '.join(f'{k} {v:g} s' for k, v in report['stages_s'].items())})", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (gpu_check.md, gpu_check.json)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (what the test suite runs)")
    ap.add_argument("--budget-s", type=float, help="skip what would start after this many seconds")
    ap.add_argument("--pytest-log", type=Path, help="the log of the pytest -m gpu step, summarised in the table")
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--images", type=int)
    a = ap.parse_args(argv)
    plan = Plan.dry() if a.dry_run else Plan()
    if a.budget_s:
        plan.budget_s = a.budget_s
    if a.models:
        plan.models = a.models
    if a.images:
        plan.images = a.images
    if plan.device == "cuda":
        plan.threads = min(plan.threads, os.cpu_count() or plan.threads)
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA device; use --dry-run on a CPU machine", file=sys.stderr)
            return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    t_end = t0 + plan.budget_s
    work = a.out / "corpus" if a.dry_run else Path(os.environ.get("TMPDIR", "/tmp")) / "nf-gpu-check-corpus"
    print(f"gpu_check: building {plan.images} JPEGs in {plan.shards} shards", flush=True)
    stages: dict[str, float] = {}

    def lap(name: str) -> None:
        stages[name] = round(time.monotonic() - t0 - sum(stages.values()), 1)
        print(f"gpu_check: {name} done ({stages[name]} s)", flush=True)

    jpegs = build_corpus(work, plan)
    lap("corpus")
    env = environment(plan)
    print(f"gpu_check: {env}", flush=True)
    lap("environment")
    summary, skips = pytest_summary(a.pytest_log)
    kind, models = measure_models(plan, work, jpegs, t_end - 60 if not a.dry_run else t_end)
    lap("models")
    similarity = measure_similarity(plan, t_end)
    lap("similarity")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": a.dry_run,
        "environment": env, "pytest": summary, "pytest_skips": skips, "cluster": kind,
        "images": plan.images, "shards": plan.shards, "batch": plan.batch, "bare_images": plan.bare_images,
        "sizes": ", ".join(f"{w}×{h}" for w, h in plan.sizes), "models": models, "similarity": similarity,
        "sim_eps": plan.sim_eps, "plan": asdict(plan), "wall_s": time.monotonic() - t0, "stages_s": stages,
    }
    md = markdown(report)
    (a.out / "gpu_check.md").write_text(md)
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(md)
    failed = [r for r in models + similarity if "error" in r and not r["error"].startswith("skipped")]
    bad_edges = any(r.get("same_edges_on_shared_rows") is False for r in similarity)
    return 1 if failed or bad_edges else 0


if __name__ == "__main__":
    sys.exit(main())
