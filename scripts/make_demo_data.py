"""Build the demo dataset: real photos plus derived duplicates, blurred copies, QR-code images, one broken JPEG.

The photos are the ones that ship inside scikit-learn (``load_sample_images``: china, flower)
and scikit-image (``skimage.data``: astronaut, chelsea, coffee, rocket, ...), so nothing is
downloaded. Each sample is ``<key>.jpg`` + ``<key>.txt`` (caption) + ``<key>.json``
(``variant``, ``photo``, ``caption``), written as GNU tar WebDataset shards.

Variants, recorded in the sidecar so the demo's results can be checked against them:

- ``original``: the photo (long side ≤ 512 px, JPEG q90)
- ``resized`` / ``cropped`` / ``recompressed``: near duplicates of an original (perceptual dedup)
- ``exact``: the original's bytes under another key (exact dedup)
- ``blurred``: Gaussian blur σ=5 (blur filter)
- ``qr``: a QR code pasted over a third of the photo (QR filter)
- ``broken``: a truncated JPEG (a decode error in the ledger)

Usage::

    python scripts/make_demo_data.py --out demo_data --shards 3
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np

MTIME = 946_684_800  # fixed, so the same script gives byte-identical shards


def photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-learn and scikit-image, long side ≤ 512 px."""
    import cv2
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    sk = load_sample_images()
    raw = {
        "china": sk.images[0],
        "flower": sk.images[1],
        "astronaut": d.astronaut(),
        "chelsea": d.chelsea(),
        "coffee": d.coffee(),
        "rocket": d.rocket(),
        "motorcycle": d.stereo_motorcycle()[0],
        "immunohistochemistry": d.immunohistochemistry(),
        "camera": np.repeat(d.camera()[..., None], 3, axis=2),
        "coins": np.repeat(d.coins()[..., None], 3, axis=2),
    }
    out = {}
    for name, rgb in raw.items():
        h, w = rgb.shape[:2]
        s = min(1.0, 512 / max(h, w))
        out[name] = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    return out


CAPTIONS = {
    "china": "a Chinese temple with a pagoda roof among trees",
    "flower": "a close-up of a pink flower with a yellow center",
    "astronaut": "portrait of an astronaut in a white space suit with an American flag",
    "chelsea": "an orange tabby cat looking to the side",
    "coffee": "a cup of coffee on a saucer, seen from above",
    "rocket": "a rocket on the launch pad under a blue sky",
    "motorcycle": "a motorcycle parked in a workshop",
    "immunohistochemistry": "a microscope image of stained tissue",
    "camera": "black and white photo of a cameraman with a tripod",
    "coins": "old coins on a dark background",
}


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def qr_overlay(rgb: np.ndarray, text: str) -> np.ndarray:
    """Paste a QR code (a third of the shorter side... and more) on the photo's centre."""
    import cv2
    import qrcode

    qr = qrcode.QRCode(border=2, box_size=10)
    qr.add_data(text)
    qr.make(fit=True)
    img = np.array(qr.make_image(fill_color="black", back_color="white").convert("RGB"))
    h, w = rgb.shape[:2]
    side = int(min(h, w) * 0.6)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST)
    out = rgb.copy()
    y, x = (h - side) // 2, (w - side) // 2
    out[y : y + side, x : x + side] = img
    return out


def samples() -> list[dict]:
    """All demo samples, in a fixed order."""
    import cv2

    ph = photos()
    out: list[dict] = []

    def add(key: str, data: bytes, photo: str, variant: str, caption: str) -> None:
        out.append({"key": key, "jpg": data, "photo": photo, "variant": variant, "caption": caption})

    originals = {name: jpeg(rgb) for name, rgb in ph.items()}
    for name, data in originals.items():
        add(f"{name}", data, name, "original", CAPTIONS[name])
    for name in ("china", "astronaut", "chelsea", "rocket"):
        rgb = ph[name]
        h, w = rgb.shape[:2]
        add(f"{name}-resized", jpeg(cv2.resize(rgb, (w * 3 // 5, h * 3 // 5), interpolation=cv2.INTER_AREA)),
            name, "resized", CAPTIONS[name] + " (smaller)")
        add(f"{name}-recompressed", jpeg(rgb, quality=35), name, "recompressed", CAPTIONS[name])
        dy, dx = h // 25, w // 25
        add(f"{name}-cropped", jpeg(rgb[dy : h - dy, dx : w - dx]), name, "cropped", CAPTIONS[name] + ", cropped")
    for name in ("flower", "coffee", "motorcycle"):
        add(f"{name}-copy", originals[name], name, "exact", CAPTIONS[name])
    for name in ("coffee", "chelsea", "china"):
        add(f"{name}-blurred", jpeg(cv2.GaussianBlur(ph[name], (0, 0), 5)), name, "blurred", CAPTIONS[name] + ", out of focus")
    for name, url in (("flower", "https://example.org/shop"), ("rocket", "https://example.org/launch"),
                      ("motorcycle", "https://example.org/bikes")):
        add(f"{name}-qr", jpeg(qr_overlay(ph[name], url)), name, "qr", CAPTIONS[name] + " with a QR code")
    add("broken", originals["coins"][: len(originals["coins"]) // 3], "coins", "broken", "a truncated JPEG")
    return out


def write_shards(out_dir: Path, items: list[dict], n_shards: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Interleave so that duplicates of one photo land in different shards (dedup must work across shards).
    shards: list[list[dict]] = [items[i::n_shards] for i in range(n_shards)]
    paths = []
    for i, group in enumerate(shards):
        path = out_dir / f"{i:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            for s in group:
                meta = {"caption": s["caption"], "photo": s["photo"], "variant": s["variant"]}
                for ext, data in (("jpg", s["jpg"]), ("txt", s["caption"].encode()), ("json", json.dumps(meta).encode())):
                    ti = tarfile.TarInfo(f"{s['key']}.{ext}")
                    ti.size = len(data)
                    ti.mtime = MTIME
                    ti.mode = 0o644
                    tar.addfile(ti, io.BytesIO(data))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_data", help="output directory (default demo_data/)")
    ap.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    args = ap.parse_args(argv)
    items = samples()
    paths = write_shards(Path(args.out), items, args.shards)
    variants: dict[str, int] = {}
    for s in items:
        variants[s["variant"]] = variants.get(s["variant"], 0) + 1
    print(f"wrote {len(items)} samples in {len(paths)} shards to {args.out}/: {variants}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
