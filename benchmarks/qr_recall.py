"""QR-code detector choice by measurement: recall, false positives and speed per detector variant.

Positives:

* zxing's camera photos (``../shared/assets/images-zxing-qrcode/qrcode-*``, 62 images, each holds a code);
* generated codes (the ``qrcode`` package, payloads of several lengths → versions 1–7) pasted into real
  photos (scikit-image, scikit-learn) on canvases of several sizes, with the code's module area covering
  2 %, 5 %, 15 % or 35 % of the canvas, rotated 0°, 15°, 30°, 45°, or seen tilted 30° / 45° (perspective),
  then
  JPEG-encoded at quality 85 (192 images).

Negatives (≥ 100 ordinary photos, none with a code): zxing's ``falsepositives*`` folders, the photos among the
shared assets, scikit-image and scikit-learn photos and crops / rescales of them.

A detection is ``qr_area_ratio > 0``. For the generated codes the true ratio (area of the warped module
square ÷ canvas area) is known, so the table also gives how close the detected ratio is (median of
``|detected / true − 1|`` over hits) and the ratio of the issue's probe (15 % of an 800×800 canvas, 15°).
Time is CPU time per image in one thread (``cv2.setNumThreads(1)``).

A last table pastes small codes into 3000×2000 photos to show what a pre-scale loses (``--large-only`` runs
just that).

Run: ``flock /tmp/nf_heavy.lock python benchmarks/qr_recall.py``
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = (0.02, 0.05, 0.15, 0.35)
WARPS = ("rot0", "rot15", "rot30", "rot45", "tilt30", "tilt45")
CANVASES = ((800, 800), (640, 480), (1280, 960), (480, 640))
PAYLOADS = (
    "https://example.org/a",
    "WIFI:T:WPA;S:nemo-frames;P:correct horse battery staple;;",
    "https://shop.example.com/products/item?id=1234567890&ref=qr-campaign-2026&utm_source=poster",
    "BEGIN:VCARD\nVERSION:3.0\nN:Doe;Jane\nORG:Example\nTEL:+1-555-0100\nEMAIL:jane@example.org\n"
    "URL:https://example.org/~jane\nADR:;;1 Main St;Springfield;;12345;US\nEND:VCARD",
)


def assets_root() -> Path | None:
    for cand in (
        os.environ.get("NEMO_FRAMES_ASSETS"),
        Path(__file__).resolve().parents[1] / ".." / "shared" / "assets",
        "/work/shared/assets",
    ):
        if cand and (Path(cand) / "images-zxing-qrcode").is_dir():
            return Path(cand)
    return None


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return np.ascontiguousarray(a[..., :3])


def photos() -> dict[str, np.ndarray]:
    """Ordinary photos bundled with scikit-image and scikit-learn (no download)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = {}
    for name in (
        "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
        "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
    ):  # fmt: skip
        out[name] = _rgb(getattr(sd, name)())
    out["motorcycle"] = _rgb(sd.stereo_motorcycle()[0])
    for name, img in zip(("china", "flower"), load_sample_images().images, strict=True):
        out[name] = _rgb(img)
    return out


def _jpeg(rgb: np.ndarray, quality: int = 85) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def qr_modules(payload: str) -> np.ndarray:
    """The code as a boolean module matrix, without quiet zone (True = dark)."""
    import qrcode

    q = qrcode.QRCode(border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
    q.add_data(payload)
    q.make(fit=True)
    return np.asarray(q.get_matrix(), bool)


def paste_code(
    background: np.ndarray, modules: np.ndarray, *, area: float, warp: str, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Paste a code (with a 4-module white quiet zone) into ``background``; return (image, true area ratio).

    The module square covers ``area`` of the canvas before warping; ``rotN`` rotates it by N degrees about
    its centre, ``tilt30`` / ``tilt45`` turn its plane 30° / 45° away from the camera (perspective).
    """
    import cv2

    h, w = background.shape[:2]
    n = modules.shape[0]
    px = 8  # pixels per module in the source drawing; the warp resamples it to the target size
    src = np.full(((n + 8) * px, (n + 8) * px), 255, np.uint8)
    src[4 * px : (4 + n) * px, 4 * px : (4 + n) * px] = np.where(np.kron(modules, np.ones((px, px), bool)), 0, 255)
    side = np.sqrt(area * h * w)  # side of the module square on the canvas
    scale = side / (n * px)
    rng = np.random.default_rng(seed)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w * max(0.0, 1 - 2 * side / w)
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h * max(0.0, 1 - 2 * side / h)
    sc = src.shape[0] / 2
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64) * src.shape[0]
    if warp.startswith("rot"):
        t = np.deg2rad(float(warp[3:]))
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        dst = (corners - sc) * scale @ rot.T + [cx, cy]
    else:
        # A camera tilt: the code's plane turned by `deg` about an axis at `axis_deg` in the image plane,
        # seen by a pinhole camera with a phone-like field of view (focal length = the canvas diagonal).
        deg, axis_deg = {"tilt30": (30.0, 20.0), "tilt45": (45.0, 110.0)}[warp]
        f = float(np.hypot(w, h))
        a, t = np.deg2rad(axis_deg), np.deg2rad(deg)
        k = np.array([np.cos(a), np.sin(a), 0.0])
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rmat = np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx  # Rodrigues
        pts = np.c_[(corners - sc) * scale, np.zeros(4)] @ rmat.T + [0.0, 0.0, f]
        dst = pts[:, :2] * (f / pts[:, 2:3]) + [cx, cy]
    hom = cv2.getPerspectiveTransform(corners.astype(np.float32), dst.astype(np.float32))
    code = cv2.warpPerspective(src, hom, (w, h), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full_like(src, 255), hom, (w, h), flags=cv2.INTER_LINEAR)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    out = (background.astype(np.float32) * (1 - alpha) + code[..., None].astype(np.float32) * alpha).round()
    inner = np.array([[4, 4], [4 + n, 4], [4 + n, 4 + n], [4, 4 + n]], np.float64) * px
    quad = cv2.perspectiveTransform(inner[None].astype(np.float32), hom)[0]
    x, y = quad[:, 0].astype(np.float64), quad[:, 1].astype(np.float64)
    true_area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return _jpeg(out.clip(0, 255).astype(np.uint8)), true_area / (h * w)


def generated_positives(bgs: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray, float]]:
    import cv2

    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble_deep_field", "china", "flower"]
    i = 0
    for b, name in enumerate(names):
        canvas = CANVASES[b % len(CANVASES)]
        bg = cv2.resize(bgs[name], canvas, interpolation=cv2.INTER_AREA)
        for area in SIZES:
            for warp in WARPS:
                mods = qr_modules(PAYLOADS[i % len(PAYLOADS)])
                img, true = paste_code(bg, mods, area=area, warp=warp, seed=i)
                i += 1
                yield f"{name}-{canvas[0]}x{canvas[1]}-a{area}-{warp}", img, true


def negatives(root: Path, bgs: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    import cv2

    from nemo_frames.images.decode import DecodeError, decode_image

    for folder in sorted((root / "images-zxing-qrcode").glob("falsepositives*")):
        for f in sorted(folder.glob("*.png")):
            yield f"zxing/{folder.name}/{f.name}", decode_image(f.read_bytes()).rgb
    for sub in ("images-clip-retrieval", "images-imagededup", "images-img2dataset", "images-data-juicer",
                "images-pillow-edgecases"):  # fmt: skip
        for f in sorted((root / sub).iterdir()):
            if f.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
                continue
            try:
                yield f"{sub}/{f.name}", decode_image(f.read_bytes()).rgb
            except DecodeError:
                continue  # the edge-case folder holds deliberately broken files
    for name, rgb in bgs.items():
        h, w = rgb.shape[:2]
        yield f"photo/{name}", rgb
        yield f"photo/{name}/centre-half", rgb[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
        yield f"photo/{name}/top-left-2/3", rgb[: 2 * h // 3, : 2 * w // 3]
        yield f"photo/{name}/x2", cv2.resize(rgb, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
        if min(h, w) >= 200:
            yield f"photo/{name}/x0.5", cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def variants() -> dict[str, Callable[[np.ndarray], float]]:
    from nemo_frames.images.metrics import qr_area_ratio

    def prescaled(method: str, long_side: int) -> Callable[[np.ndarray], float]:
        def f(rgb: np.ndarray) -> float:
            s = min(1.0, long_side / max(rgb.shape[:2]))
            return qr_area_ratio(rgb, method=method, scales=(s,))  # type: ignore[arg-type]

        return f

    return {
        "classic_decode (QRCodeDetector.detectAndDecodeMulti; old default)": lambda x: qr_area_ratio(
            x, method="classic_decode"
        ),
        "classic (QRCodeDetector.detectMulti)": lambda x: qr_area_ratio(x, method="classic"),
        "classic, scales 1, 0.5": lambda x: qr_area_ratio(x, method="classic", scales=(1.0, 0.5)),
        "aruco_decode (QRCodeDetectorAruco.detectAndDecodeMulti)": lambda x: qr_area_ratio(
            x, method="aruco_decode"
        ),
        "**aruco** (QRCodeDetectorAruco.detectMulti; default)": lambda x: qr_area_ratio(x, method="aruco"),
        "aruco, scales 1, 0.5": lambda x: qr_area_ratio(x, method="aruco", scales=(1.0, 0.5)),
        "aruco, pre-scaled to long side ≤ 640": prescaled("aruco", 640),
    }


def large_photos(bgs: dict[str, np.ndarray]) -> None:
    """Small codes (1–5 %) in 3000×2000 photos: full resolution vs a pre-scale to 640 px (what it loses)."""
    import cv2

    from nemo_frames.images.metrics import qr_area_ratio

    cases = []
    for name in ("china", "rocket"):
        bg = cv2.resize(bgs[name], (3000, 2000), interpolation=cv2.INTER_CUBIC)
        for area in (0.01, 0.02, 0.05):
            for warp in ("rot0", "rot15", "tilt30"):
                img, _ = paste_code(bg, qr_modules(PAYLOADS[len(cases) % 4]), area=area, warp=warp, seed=len(cases))
                cases.append((area, img))
    print("\nSmall codes in 3000×2000 photos (2 photos × 1 / 2 / 5 % × rot0 / rot15 / tilt30):\n")
    print("| detector | found | found at 1 % | ms/img |")
    print("|---|---:|---:|---:|")
    for label, scale in (("aruco, full resolution", 1.0), ("aruco, pre-scaled to long side ≤ 640", 640 / 3000)):
        t0 = time.process_time()
        hits = [(area, qr_area_ratio(img, scales=(scale,)) > 0) for area, img in cases]
        ms = (time.process_time() - t0) / len(cases) * 1000
        small = [h for a, h in hits if a == 0.01]
        print(f"| {label} | {sum(h for _, h in hits)}/{len(hits)} | {sum(small)}/{len(small)} | {ms:.1f} |")


def main() -> None:
    import cv2

    from nemo_frames.images.decode import decode_image

    cv2.setNumThreads(1)
    if "--large-only" in sys.argv:
        large_photos(photos())
        return
    root = assets_root()
    if root is None:
        raise SystemExit("shared assets not found (set NEMO_FRAMES_ASSETS)")
    bgs = photos()
    zx = [
        (f"zxing/{d.name}/{f.name}", decode_image(f.read_bytes()).rgb)
        for d in sorted((root / "images-zxing-qrcode").glob("qrcode-*"))
        for f in sorted(d.glob("*.png"))
    ]
    gen = list(generated_positives(bgs))
    neg = list(negatives(root, bgs))
    probe_mods = qr_modules("https://example.org/nemo-frames")
    probe, probe_true = paste_code(cv2.resize(bgs["coffee"], (800, 800)), probe_mods, area=0.15, warp="rot15")
    print(f"positives: {len(zx)} zxing photos + {len(gen)} generated; negatives: {len(neg)} ordinary photos")
    print(f"probe: 800×800, code area {probe_true:.3f}, rotated 15°\n")
    print(
        "| detector | recall zxing | recall generated | recall all | false positives | "
        "median abs(ratio/true − 1) | probe ratio | ms/img |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    misses: dict[str, list[str]] = {}
    for label, fn in variants().items():
        secs = 0.0
        n_img = 0

        def timed(rgb: np.ndarray, _fn: Callable[[np.ndarray], float] = fn) -> float:
            nonlocal secs, n_img
            t0 = time.process_time()
            r = _fn(rgb)
            secs += time.process_time() - t0
            n_img += 1
            return r

        zx_hits = sum(timed(rgb) > 0 for _, rgb in zx)
        gen_hits = 0
        errs = []
        missed = []
        for name, rgb, true in gen:
            r = timed(rgb)
            if r > 0:
                gen_hits += 1
                errs.append(abs(r / true - 1))
            else:
                missed.append(name)
        fps = [name for name, rgb in neg if timed(rgb) > 0]
        misses[label] = missed
        rec_all = (zx_hits + gen_hits) / (len(zx) + len(gen))
        print(
            f"| {label} | {zx_hits}/{len(zx)} ({zx_hits / len(zx):.1%}) | {gen_hits}/{len(gen)} "
            f"({gen_hits / len(gen):.1%}) | {rec_all:.1%} | {len(fps)}/{len(neg)} ({len(fps) / len(neg):.1%}) | "
            f"{statistics.median(errs) if errs else float('nan'):.3f} | {fn(probe):.3f} | "
            f"{secs / n_img * 1000:.1f} |"
        )
        if fps:
            print(f"|  false positives: {', '.join(fps[:8])} | | | | | | | |")
    print("\nGenerated codes missed, by (size, warp):")
    for label, missed in misses.items():
        by: dict[str, int] = {}
        for m in missed:
            a, wp = m.split("-a")[1].split("-", 1)
            by[f"{a}/{wp}"] = by.get(f"{a}/{wp}", 0) + 1
        print(f"- {label}: {dict(sorted(by.items())) or 'none'}")
    large_photos(bgs)


if __name__ == "__main__":
    main()
