"""Decode + CLIP preprocessing: open_clip's own PIL transform vs the nemo_frames fast path, same photos, same process.

Photos: scikit-image photos resized to web sizes (1024×768, 1600×1200, 768×1024) and re-encoded as JPEG q90
(4:2:0), plus every JPEG photo under ../shared/assets (when present). Every method runs over the whole set
``--repeats`` times, methods interleaved round by round so machine contention hits all of them alike. Rates are
images per CPU-second of this process (per core; robust to other load on the machine), and per wall-second.

Errors: mean / max absolute difference of the 224×224 crop against open_clip's, in [0, 1] pixel space before
normalisation, reported ×255 (so "1.0" = one grey level). "max" is the largest per-image mean.

Run: ``python benchmarks/decode_preprocess.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _assets() -> Path | None:
    for cand in (
        os.environ.get("NEMO_FRAMES_ASSETS"),
        Path(__file__).resolve().parents[1] / ".." / "shared" / "assets",
        "/work/shared/assets",
    ):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def build_photos() -> list[tuple[str, bytes]]:
    import skimage.data as sd
    from PIL import Image

    out: list[tuple[str, bytes]] = []
    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "retina",
        "hubble_deep_field",
        "immunohistochemistry",
        "stereo_motorcycle",
        "brick",
        "gravel",
    ]
    for n in names:
        a = getattr(sd, n)()
        a = a[0] if isinstance(a, tuple) else a
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        for w, h in [(1024, 768), (1600, 1200), (768, 1024)]:
            buf = io.BytesIO()
            Image.fromarray(a).resize((w, h), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
            out.append((f"{n}@{w}x{h}", buf.getvalue()))
    root = _assets()
    if root is not None:
        for p in sorted(root.glob("images-*/**/*.jpg")):
            data = p.read_bytes()
            if data[:3] == b"\xff\xd8\xff" and "corrupt" not in p.name and "truncated" not in p.name:
                out.append((str(p.relative_to(root)), data))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import cv2
    import open_clip
    import simplejpeg
    import torch
    from PIL import Image

    from nemo_frames.images.decode import decode_image
    from nemo_frames.images.preprocess import params_from_open_clip, preprocess_image

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    params = params_from_open_clip(pre)
    photos = build_photos()
    std = np.asarray(params.std, np.float32)[:, None, None]

    def open_clip_pre(data: bytes) -> np.ndarray:
        return pre(Image.open(io.BytesIO(data))).numpy()

    def fast(resample: str, reduced: bool = True):
        def run(data: bytes) -> np.ndarray:
            img = decode_image(data, target=params.decode_target if reduced else None)
            return preprocess_image(img, params, resample=resample)  # type: ignore[arg-type]

        return run

    pre_methods = {
        "open_clip preprocess (PIL decode + PIL bicubic)": open_clip_pre,
        "fast: DCT-reduced + auto (default)": fast("auto"),
        "fast: DCT-reduced + cv2-cubic": fast("cv2-cubic"),
        "fast: DCT-reduced + cv2-area": fast("cv2-area"),
        "fast: DCT-reduced + cv2-linear": fast("cv2-linear"),
        "fast: DCT-reduced + pil-bicubic (crop box)": fast("pil-bicubic"),
        "full simplejpeg + auto": fast("auto", reduced=False),
    }
    decode_methods = {
        "PIL full decode (open + convert RGB)": lambda d: np.asarray(
            Image.open(io.BytesIO(d)).convert("RGB")
        ),
        "simplejpeg full decode": lambda d: simplejpeg.decode_jpeg(d),
        "simplejpeg DCT-reduced (decode_image target=224)": lambda d: decode_image(d, target=224).rgb,
    }
    methods = {**pre_methods, **decode_methods}
    cpu = {k: [] for k in methods}
    wall = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, f in methods.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _n, d in photos:
                f(d)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)

    from PIL import ImageOps

    # open_clip ignores EXIF orientation; we turn images upright, so errors compare against the upright image.
    refs = [pre(ImageOps.exif_transpose(Image.open(io.BytesIO(d)))).numpy() for _n, d in photos]

    web = np.array(["@" in n for n, _d in photos])

    def err(f) -> tuple[float, float, float, float]:
        per = []
        for (_n, d), r in zip(photos, refs, strict=True):
            per.append(float(np.abs((f(d) - r) * std).mean()) * 255)
        e = np.asarray(per)
        return (
            float(e.mean()),
            float(e.max()),
            float(e[web].mean()),
            float(e[~web].mean()) if (~web).any() else 0.0,
        )

    base = "open_clip preprocess (PIL decode + PIL bicubic)"
    n = len(photos)
    mp = sum(np.prod(decode_image(d).rgb.shape[:2]) for _n, d in photos) / n / 1e6
    print(f"{n} JPEG photos, mean {mp:.2f} MP; {args.repeats} rounds; rates from the median round\n")
    print(f"web-size photos: {int(web.sum())}, asset photos: {int((~web).sum())}\n")
    print(
        "| decode + preprocess to (3,224,224) | img/s (CPU time) | img/s (wall) | × open_clip (CPU) "
        "| mean abs err (/255) | max per-image (/255) | mean, web sizes | mean, assets |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    b_cpu = n / np.median(cpu[base])
    for name, f in pre_methods.items():
        r_cpu, r_wall = n / np.median(cpu[name]), n / np.median(wall[name])
        e = err(f)
        print(
            f"| {name} | {r_cpu:.0f} | {r_wall:.0f} | {r_cpu / b_cpu:.2f} | "
            + " | ".join(f"{v:.2f}" for v in e)
            + " |"
        )
    print("\n| decode only | img/s (CPU time) | img/s (wall) | × PIL full (CPU) |")
    print("|---|---:|---:|---:|")
    d_base = n / np.median(cpu["PIL full decode (open + convert RGB)"])
    for name in decode_methods:
        r_cpu, r_wall = n / np.median(cpu[name]), n / np.median(wall[name])
        print(f"| {name} | {r_cpu:.0f} | {r_wall:.0f} | {r_cpu / d_base:.2f} |")


if __name__ == "__main__":
    main()
