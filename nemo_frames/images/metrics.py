"""Per-image pixel metrics: blur, QR-code area ratio, perceptual hash; and the content hash of the raw bytes.

Definitions (and why they were chosen) are in ``docs/operators/decode.md``. Blur and the QR ratio are defined
on the full-resolution image (both change with scale); pHash is nearly scale-free (the image is shrunk to 32×32
first), so a DCT-reduced decode may feed it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np

__all__ = ["blur_score", "content_hash", "hamming", "phash", "phash_hex", "qr_area_ratio", "qr_polygons"]


def _check_rgb(rgb: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(
            f"{what}: expected an (H, W, 3) or (H, W) uint8 image, found shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def blur_score(rgb: np.ndarray) -> float:
    """Sharpness as the variance of the Laplacian over all pixels **and all three channels** (no grey conversion).

    ``float(cv2.Laplacian(rgb, cv2.CV_64F).var())`` with OpenCV's default 3×3 aperture
    (``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``, reflect-101 borders), as NeMo Curator's blur filter computes it,
    so scores from both tools agree. Lower is blurrier; the default filter keeps ``>= 100``. A grey ``(H, W)``
    image is accepted too (then the variance is over one channel, which is what a grey image repeated to RGB
    gives anyway).

    Examples
    --------
    >>> import numpy as np
    >>> blur_score(np.full((32, 32, 3), 128, np.uint8))
    0.0
    """
    import cv2

    arr = _check_rgb(rgb, "blur_score")
    return float(cv2.Laplacian(arr, cv2.CV_64F).var())


def _shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


QRMethod = Literal["aruco", "aruco_decode", "classic", "classic_decode"]
_QR_METHODS = ("aruco", "aruco_decode", "classic", "classic_decode")


def _qr_detect(gray: np.ndarray, method: str) -> np.ndarray:
    import cv2

    # A fresh detector per call (about 1 µs): no state carried between images or threads.
    det = cv2.QRCodeDetectorAruco() if method.startswith("aruco") else cv2.QRCodeDetector()
    try:
        if method.endswith("_decode"):
            ok, _texts, points, _straight = det.detectAndDecodeMulti(gray)
        else:
            ok, points = det.detectMulti(gray)
    except cv2.error:
        # OpenCV raises on some degenerate inputs (tiny images); treat as "no code found", as NeMo Curator does.
        return np.zeros((0, 4, 2), np.float32)
    if not ok or points is None:
        return np.zeros((0, 4, 2), np.float32)
    return np.asarray(points, dtype=np.float32).reshape(-1, 4, 2)


def qr_polygons(
    rgb: np.ndarray, *, method: QRMethod = "aruco", scales: tuple[float, ...] = (1.0,)
) -> np.ndarray:
    """Corner polygons ``(n, 4, 2)`` float32 of the QR codes OpenCV finds (empty ``(0, 4, 2)`` when none).

    ``method`` picks the detector, chosen by measurement (``benchmarks/qr_recall.py``, table in
    ``docs/operators/decode.md``): ``"aruco"`` (default) is ``cv2.QRCodeDetectorAruco().detectMulti``, which
    finds finder patterns with ArUco's contour machinery and so keeps finding codes that are rotated, warped
    or small; ``"classic"`` is ``cv2.QRCodeDetector().detectMulti``; the ``*_decode`` forms call
    ``detectAndDecodeMulti`` instead (codes found but not decoded still count). ``scales`` are tried in
    order on a resized copy (``INTER_AREA`` down, ``INTER_LINEAR`` up) until one finds a code; polygons are
    mapped back to the input's pixel coordinates. The image is converted to grey with RGB weights first.

    Examples
    --------
    >>> import numpy as np
    >>> qr_polygons(np.zeros((64, 64, 3), np.uint8)).shape
    (0, 4, 2)
    """
    import cv2

    if method not in _QR_METHODS:
        raise ValueError(f"qr_polygons: method must be one of {_QR_METHODS}, got {method!r}")
    if not scales or any(not 0 < s <= 8 for s in scales):
        raise ValueError(f"qr_polygons: scales must be one or more factors in (0, 8], got {scales!r}")
    arr = _check_rgb(rgb, "qr_polygons")
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else arr
    h, w = gray.shape
    for s in scales:
        if s == 1.0:
            polys = _qr_detect(gray, method)
        else:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            polys = _qr_detect(small, method)
            polys = polys * np.array([w / size[0], h / size[1]], np.float32)
        if len(polys):
            return polys
    return np.zeros((0, 4, 2), np.float32)


def qr_area_ratio(
    rgb: np.ndarray, *, method: QRMethod = "aruco", scales: tuple[float, ...] = (1.0,)
) -> float:
    """Total area of detected QR-code polygons ÷ image area, clipped to 1.0 (0.0 when none is found).

    Each polygon's area is the shoelace area of its 4 corners (what ``cv2.contourArea`` gives); areas of all
    codes are **summed** (as NeMo Curator does), so overlapping detections may count twice, hence the clip.
    The default filter keeps ``< 0.05``. ``method`` and ``scales`` as in :func:`qr_polygons`.

    Examples
    --------
    >>> import numpy as np
    >>> qr_area_ratio(np.zeros((64, 64, 3), np.uint8))
    0.0
    """
    arr = _check_rgb(rgb, "qr_area_ratio")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        return 0.0
    polys = qr_polygons(arr, method=method, scales=scales)
    total = sum(_shoelace(p) for p in polys)
    return float(min(1.0, total / (h * w)))


def phash(rgb: np.ndarray) -> np.uint64:
    """64-bit perceptual hash, bit-identical to imagededup's ``PHash``.

    Steps: Pillow ``resize((32, 32), LANCZOS)`` of the RGB image, then ``convert("L")`` (ITU-R 601 luma,
    uint8); 2-D DCT-II (unnormalised, rows then columns); the top-left 8×8 coefficients; each bit is
    ``coef >= median`` of the 63 coefficients other than the DC term. Bit order: row-major over the 8×8 block,
    coefficient (0, 0) in the most significant bit, so ``f"{h:016x}"`` equals imagededup's hex string.
    (``imagehash.phash`` differs: its median includes the DC term and it uses ``>``; ``hash_size=8`` bits are
    otherwise in the same order.)

    Examples
    --------
    >>> import numpy as np
    >>> h = phash(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    >>> isinstance(h, np.uint64)
    True
    """
    from PIL import Image
    from scipy.fft import dct

    arr = _check_rgb(rgb, "phash")
    im = Image.fromarray(arr)
    small = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS).convert("L"), dtype=np.float64)
    coef = dct(dct(small, axis=0), axis=1)[:8, :8]
    flat = coef.ravel()
    bits = flat >= np.median(flat[1:])
    return np.uint64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


def phash_hex(h: int | np.integer) -> str:
    """A pHash as 16 lower-case hex digits (imagededup's string form).

    Examples
    --------
    >>> phash_hex(np.uint64(255))
    '00000000000000ff'
    """
    return f"{int(h):016x}"


def content_hash(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 of the raw image bytes, as 64 lower-case hex digits (exact-duplicate key).

    SHA-256 runs at about 1–2 GB/s per core with SHA extensions, i.e. well under 0.1 ms for a 100 KB JPEG, a
    few percent of its decode, and needs no extra dependency.

    Examples
    --------
    >>> content_hash(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def hamming(a: Any, b: Any) -> Any:
    """Number of differing bits between 64-bit hashes (Python ints or numpy uint64 arrays, broadcast).

    Examples
    --------
    >>> hamming(0b1011, 0b0001)
    2
    >>> import numpy as np
    >>> hamming(np.array([0, 3], np.uint64), np.uint64(1)).tolist()
    [1, 1]
    """
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return (int(a) ^ int(b)).bit_count()
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)
