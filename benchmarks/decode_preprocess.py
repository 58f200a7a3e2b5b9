"""Decode + CLIP preprocessing: open_clip's own transform vs the nemo_frames fast path, per size class and orientation.

Photos (real): scikit-image photos resized to sizes that do and do not divide by 8, tiny ones that must be
upscaled, thin strips (24×1600 JPEG, 1×12000 PNG), one non-multiple-of-8 size stored with each EXIF orientation
1–8, and every JPEG photo under ../shared/assets (when present). JPEGs are q90 4:2:0.

For each method and class it prints:

- pixel error: mean absolute difference of the 224×224 crop against open_clip's transform applied to the
  EXIF-upright image, in [0, 1] pixel space before normalisation, ×255 ("1.0" = one grey level); the class mean
  and the largest per-image mean;
- embedding loss: ``1 − cos`` between the embeddings of both preprocessings, largest in the class, for two
  random-weight models (``nf-tiny-vit`` at 224 px and open_clip ``ViT-B-32``; no pretrained weights exist here);
- speed: images per CPU-second of this single-threaded process (torch and OpenCV at 1 thread), decode included,
  as a ratio to open_clip's ``preprocess(Image.open(...))`` measured in the same rounds (methods interleaved
  round by round; median round).

Run: ``flock /tmp/nf_heavy.lock python benchmarks/decode_preprocess.py [--repeats 3] [--no-embed]``
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
CLASSES: dict[str, list[tuple[int, int]]] = {
    "web, sides ÷ 8": [(1024, 768), (1280, 960), (1600, 1200), (768, 1024)],
    "web, sides not ÷ 8": [(1280, 957), (1023, 767), (641, 479), (1001, 751), (1999, 1333)],
    "small (upscaled)": [(3, 2), (200, 150), (161, 213)],
    "thin strips": [(24, 1600), (1600, 24)],
}
ALL = "all but thin strips"  # open_clip's cost on strips (a 224 × 2.7M resize) would swamp the ratio
ORIENT_SIZE = (1023, 767)  # upright size of the EXIF-orientation class; not a multiple of 8 either way
# ImageOps.exif_transpose turns orientation o upright with these; a file stores the inverse.
_STORE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
          7: "TRANSVERSE", 8: "ROTATE_270"}  # fmt: skip


def _assets() -> Path | None:
    for cand in (
        os.environ.get("NEMO_FRAMES_ASSETS"),
        ROOT / ".." / "shared" / "assets",
        "/work/shared/assets",
    ):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def _photo(name: str) -> np.ndarray:
    import skimage.data as sd

    a = getattr(sd, name)()
    a = a[0] if isinstance(a, tuple) else a
    return np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]


def _jpeg(im, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def build_photos() -> list[tuple[str, str, bytes]]:
    """``(class, name, bytes)`` for every test image."""
    from PIL import Image

    out: list[tuple[str, str, bytes]] = []
    lanczos = Image.Resampling.LANCZOS
    for name in PHOTOS:
        src = Image.fromarray(_photo(name))
        for cls, sizes in CLASSES.items():
            for w, h in sizes:
                out.append((cls, f"{name}@{w}x{h}", _jpeg(src.resize((w, h), lanczos))))
        upright = src.resize(ORIENT_SIZE, lanczos)
        for o in range(1, 9):
            stored = upright if o == 1 else upright.transpose(getattr(Image.Transpose, _STORE[o]))
            exif = Image.Exif()
            exif[0x0112] = o
            out.append((f"EXIF orientation {o}", f"{name}@o{o}", _jpeg(stored, exif=exif.tobytes())))
    strip = np.repeat(_photo("astronaut")[:, 256:257], 24, axis=0)[:12000]  # 1×12000, a real pixel column
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(strip)).save(buf, "PNG")
    out.append(("thin strips", "astronaut-column@1x12000.png", buf.getvalue()))
    root = _assets()
    if root is not None:
        for p in sorted(root.glob("images-*/**/*.jpg")):
            data = p.read_bytes()
            if data[:3] == b"\xff\xd8\xff" and "corrupt" not in p.name and "truncated" not in p.name:
                out.append(("asset JPEGs (real)", str(p.relative_to(root)), data))
    return out


_RSS_PROBE = """
import io, sys
sys.path.insert(0, {root!r})
import numpy, cv2, PIL.Image
from nemo_frames.images.decode import decode_image
from nemo_frames.images.preprocess import preprocess_image
data, method = open({path!r}, "rb").read(), {method!r}
if method == "open_clip":
    import open_clip
    pre = open_clip.image_transform(224, is_train=False)
def kib(field):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(field))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = kib("VmRSS:")
if method == "open_clip":
    pre(PIL.Image.open(io.BytesIO(data)))
else:
    preprocess_image(decode_image(data, target=224), resample=method)
print((kib("VmHWM:") - before) / 1024)
"""


def _peak_rss_mb(method: str, data_path: str) -> float:
    """Peak RSS added by one decode + preprocess, in a fresh process (Linux: VmHWM after resetting it)."""
    code = _RSS_PROBE.format(root=str(ROOT), path=data_path, method=method)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-embed", action="store_true", help="skip the embedding-loss columns")
    args = ap.parse_args()

    import cv2
    import open_clip
    import torch
    from PIL import Image, ImageOps

    from nemo_frames.images.decode import decode_image
    from nemo_frames.images.preprocess import params_from_open_clip, preprocess_image
    from nemo_frames.models.clip import register_model_configs

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pre = open_clip.image_transform(224, is_train=False)
    params = params_from_open_clip(pre)
    photos = build_photos()
    classes = list(dict.fromkeys(c for c, _n, _d in photos))
    std = np.asarray(params.std, np.float32)[:, None, None]

    def open_clip_pre(data: bytes) -> np.ndarray:
        return pre(Image.open(io.BytesIO(data))).numpy()

    def fast(resample: str, ignore_box: bool = False):
        def run(data: bytes) -> np.ndarray:
            img = decode_image(data, target=params.decode_target)
            if ignore_box:  # the mapping before issue 15: reduced pixels taken to span exactly the image
                img = dataclasses.replace(img, box=None)
            return preprocess_image(img, params, resample=resample)  # type: ignore[arg-type]

        return run

    base = "open_clip preprocess (PIL decode + bicubic)"
    methods = {
        base: open_clip_pre,
        "fast cv2-linear (default)": fast("cv2-linear"),
        "fast auto": fast("auto"),
        "fast cv2-cubic": fast("cv2-cubic"),
        "fast pil-bicubic": fast("pil-bicubic"),
        "fast cv2-linear, scaled pixels stretched (before)": fast("cv2-linear", ignore_box=True),
    }
    by_class = {c: [d for cc, _n, d in photos if cc == c] for c in classes}
    cpu = {(m, c): [] for m in methods for c in classes}
    for _ in range(args.repeats):
        for c, datas in by_class.items():
            for m, f in methods.items():
                t0 = time.process_time()
                for d in datas:
                    f(d)
                cpu[(m, c)].append(time.process_time() - t0)

    # open_clip ignores EXIF orientation; we turn images upright, so errors compare against the upright image.
    refs = [pre(ImageOps.exif_transpose(Image.open(io.BytesIO(d)))).numpy() for _c, _n, d in photos]
    outs = {m: [f(d) for _c, _n, d in photos] for m, f in methods.items() if m != base}
    err = {m: np.asarray([float(np.abs((o - r) * std).mean()) * 255 for o, r in zip(v, refs, strict=True)])
           for m, v in outs.items()}  # fmt: skip
    cls = np.asarray([c for c, _n, _d in photos])

    loss: dict[tuple[str, str], np.ndarray] = {}
    models = {}
    if not args.no_embed:
        register_model_configs()
        torch.manual_seed(0)
        models = {
            # The tiny test model takes 64 px; at 224 px it sees what ViT-B-32 sees (same preprocessing).
            "nf-tiny-vit": open_clip.create_model(
                "nf-tiny-vit", pretrained=None, force_image_size=224
            ).eval(),
            "ViT-B-32": open_clip.create_model("ViT-B-32", pretrained=None).eval(),
        }

        def embed(model, arrs: list[np.ndarray]) -> np.ndarray:
            res = []
            with torch.inference_mode():
                for s in range(0, len(arrs), 32):
                    x = torch.from_numpy(np.stack(arrs[s : s + 32]))
                    res.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy())
            return np.concatenate(res).astype(np.float64)

        for mn, model in models.items():
            e_ref = embed(model, refs)
            for m, v in outs.items():
                e = embed(model, v)
                loss[(mn, m)] = 1.0 - np.sum(e * e_ref, axis=1) / (
                    np.linalg.norm(e, axis=1) * np.linalg.norm(e_ref, axis=1)
                )

    n = len(photos)
    print(f"{n} images in {len(classes)} classes; {args.repeats} rounds, single-threaded; CPU-time rates\n")
    for m in methods:
        if m == base:
            continue
        print(f"### {m}\n")
        head = "| class | images | mean err (/255) | max per-image (/255) |"
        head += "".join(f" max 1−cos {mn} |" for mn in models) + " img/s (CPU) | × open_clip |"
        print(head)
        print("|---|---:|---:|---:|" + "---:|" * len(models) + "---:|---:|")
        for c in [*classes, ALL]:
            cs = [x for x in classes if x != "thin strips"] if c == ALL else [c]
            sel = np.isin(cls, cs)
            k = int(sel.sum())
            t_m = float(np.median(np.sum([cpu[(m, x)] for x in cs], axis=0)))
            t_b = float(np.median(np.sum([cpu[(base, x)] for x in cs], axis=0)))
            row = f"| {c} | {k} | {err[m][sel].mean():.2f} | {err[m][sel].max():.2f} |"
            row += "".join(f" {loss[(mn, m)][sel].max():.1e} |" for mn in models)
            row += f" {k / t_m:.0f} | {t_b / t_m:.2f} |"
            print(row)
        print()

    strip = next(d for _c, nm, d in photos if nm.endswith("1x12000.png"))
    path = "/tmp/nf_bench_strip_1x12000.png"
    Path(path).write_bytes(strip)
    print("### 1×12000 PNG strip: peak RSS added by one decode + preprocess (fresh process each)\n")
    print("| method | peak RSS (MB) |")
    print("|---|---:|")
    for m in ("open_clip", "cv2-linear", "auto", "pil-bicubic"):
        print(f"| {m} | {_peak_rss_mb(m, path):.1f} |")


if __name__ == "__main__":
    main()
