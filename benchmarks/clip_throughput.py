"""ClipEmbedder.embed_images vs a bare open_clip loop, and bf16 vs fp32 embedding agreement.

Both loops run on the same model object, the same pre-made batch (real scikit-image photos through
open_clip's own transform, tiled), the same batch size and dtype, alternating rounds so machine
contention hits both alike. Weights are random (``pretrained=None``: no download); the two
precisions of a model start from the same seed, so their embeddings are comparable.

Usage::

    python benchmarks/clip_throughput.py                      # ViT-B-32 and ViT-L-14, fp32 and bf16
    python benchmarks/clip_throughput.py --models ViT-B-32 --batch 32 --batches 3 --rounds 2

Prints a markdown table: images/s of each loop and their ratio (target >= 0.90), and the cosine of
bf16 to fp32 embeddings (min / mean over the photos).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# Run against this checkout's package, not whichever nemo_frames the venv has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _photos(preprocess, n: int) -> np.ndarray:
    import skimage.data as d
    import torch
    from PIL import Image

    imgs = [
        d.astronaut(),
        d.chelsea(),
        d.coffee(),
        d.rocket(),
        d.stereo_motorcycle()[0],
        d.hubble_deep_field(),
    ]
    x = torch.stack([preprocess(Image.fromarray(im)) for im in imgs]).numpy()
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def _bare(model, x: np.ndarray, bs: int, dtype) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(x), bs):
            f = model.encode_image(torch.from_numpy(x[s : s + bs]).to(dtype))
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).numpy())
    return np.concatenate(out)


def run(
    models: list[str], precisions: list[str], batch: dict[str, int], batches: dict[str, int], rounds: int
):
    import torch

    from nemo_frames.models.clip import ClipConfig, ClipEmbedder

    rows = []
    cos_rows = []
    for name in models:
        bs, nb = batch[name], batches[name]
        embs = {}
        x = None
        for prec in precisions:
            torch.manual_seed(0)  # same random weights for every precision
            emb = ClipEmbedder(
                ClipConfig(model=name, pretrained=None, device="cpu", precision=prec, batch_size=bs)
            )
            if x is None:
                x = _photos(emb.preprocess, bs * nb)
            # Warm-up (first-call allocations, oneDNN kernel selection); one suffices since both
            # loops drive the same model object.
            emb.embed_images(x[:bs])
            t_ours = t_bare = 0.0
            for r in range(rounds):
                # Alternate which loop goes first so drift in machine load does not favour one.
                for which in ("ours", "bare") if r % 2 == 0 else ("bare", "ours"):
                    t0 = time.perf_counter()
                    if which == "ours":
                        ours = emb.embed_images(x)
                        t_ours += time.perf_counter() - t0
                    else:
                        ref = _bare(emb.model, x, bs, emb.dtype)
                        t_bare += time.perf_counter() - t0
            assert np.abs(ours - ref).max() <= 1e-5, "ClipEmbedder and bare loop disagree"
            n = len(x) * rounds
            label = f"auto → {emb.precision}" if prec == "auto" else prec
            rows.append((name, label, bs, n, n / t_bare, n / t_ours, t_bare / t_ours))
            embs[prec] = emb.embed_images(x[:6])
            del emb
        if "fp32" in embs and "bf16" in embs:
            cos = (embs["fp32"] * embs["bf16"]).sum(axis=1)
            cos_rows.append((name, float(cos.min()), float(cos.mean())))
    return rows, cos_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"],
                    help="auto: what precision='auto' picks on this CPU (AMX / AVX512-BF16 → bf16, else fp32)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 32 for B-32, 16 for L-14)")
    ap.add_argument(
        "--batches", type=int, default=None, help="batches per round (default 2 for B-32, 1 for L-14)"
    )
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds; order alternates between rounds")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    batch = {m: a.batch or (16 if "L-14" in m else 32) for m in a.models}
    batches = {m: a.batches or (1 if "L-14" in m else 2) for m in a.models}
    rows, cos_rows = run(a.models, a.precisions, batch, batches, a.rounds)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, random weights, real photos\n")
    print("| model | precision | batch | images | bare open_clip img/s | ClipEmbedder img/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, prec, bs, n, b, o, r in rows:
        print(f"| {name} | {prec} | {bs} | {n} | {b:.2f} | {o:.2f} | {r:.2f} |")
    speed = {(r[0], r[1]): r[5] for r in rows}
    if cos_rows:
        print("\n| model | bf16 vs fp32 cosine min | mean | bf16 speed-up (ClipEmbedder) |")
        print("|---|---:|---:|---:|")
        for name, mn, mean in cos_rows:
            up = speed.get((name, "bf16"), float("nan")) / speed.get((name, "fp32"), float("nan"))
            print(f"| {name} | {mn:.5f} | {mean:.5f} | {up:.2f}x |")


if __name__ == "__main__":
    main()
