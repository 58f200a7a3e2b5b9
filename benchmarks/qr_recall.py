"""QR-code detector recall and false-positive rate on the zxing test images (../shared/assets/images-zxing-qrcode).

Recall: share of images in ``qrcode-*`` folders with ``qr_area_ratio > 0``. False-positive rate: share of images
in ``falsepositives*`` folders with ``qr_area_ratio > 0``. Also the share above the default filter threshold
(0.05) and the time per image, for both OpenCV methods (``detectAndDecodeMulti`` vs ``detectMulti``).

Run: ``python benchmarks/qr_recall.py``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def zxing_root() -> Path | None:
    for cand in (
        os.environ.get("NEMO_FRAMES_ASSETS"),
        Path(__file__).resolve().parents[1] / ".." / "shared" / "assets",
        "/work/shared/assets",
    ):
        if cand and (Path(cand) / "images-zxing-qrcode").is_dir():
            return Path(cand) / "images-zxing-qrcode"
    return None


def measure(root: Path, method: str) -> dict[str, tuple[int, int, int, float]]:
    """Per folder: (images, ratio > 0, ratio >= 0.05, seconds)."""
    from nemo_frames.images.decode import decode_image
    from nemo_frames.images.metrics import qr_area_ratio

    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        n = hit = above = 0
        secs = 0.0
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif"):
                continue
            rgb = decode_image(f.read_bytes()).rgb
            t0 = time.process_time()
            r = qr_area_ratio(rgb, method=method)  # type: ignore[arg-type]
            secs += time.process_time() - t0
            n += 1
            hit += r > 0
            above += r >= 0.05
        out[folder.name] = (n, hit, above, secs)
    return out


def main() -> None:
    import cv2

    cv2.setNumThreads(1)
    root = zxing_root()
    if root is None:
        raise SystemExit("images-zxing-qrcode not found (set NEMO_FRAMES_ASSETS)")
    print("| method | folder | images | detected (ratio > 0) | ratio ≥ 0.05 | ms/img (CPU) |")
    print("|---|---|---:|---:|---:|---:|")
    summary = []
    for method in ("detect_decode", "detect"):
        res = measure(root, method)
        for folder, (n, hit, above, secs) in res.items():
            print(f"| {method} | {folder} | {n} | {hit} ({hit / n:.0%}) | {above} | {secs / n * 1000:.1f} |")
        pos = [v for k, v in res.items() if k.startswith("qrcode")]
        neg = [v for k, v in res.items() if k.startswith("falsepositives")]
        recall = sum(v[1] for v in pos) / max(1, sum(v[0] for v in pos))
        fpr = sum(v[1] for v in neg) / max(1, sum(v[0] for v in neg))
        summary.append((method, recall, fpr))
    print("\n| method | recall (qrcode-*) | false-positive rate (falsepositives*) |")
    print("|---|---:|---:|")
    for method, recall, fpr in summary:
        print(f"| {method} | {recall:.1%} | {fpr:.1%} |")


if __name__ == "__main__":
    main()
