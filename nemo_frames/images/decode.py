"""Image bytes → upright RGB uint8 pixels, with a pixel cap before decode and typed per-sample errors.

Two CPU paths, chosen by the bytes' magic number (never by the file name):

- **JPEG fast path** (libjpeg-turbo through simplejpeg): header first (size, colour space), pixel cap, then a
  decode scaled in the DCT domain to the smallest factor n/8 (n ≤ 4) whose output keeps both sides ≥ ``target``, then the
  EXIF orientation applied with numpy. CMYK/YCCK JPEGs, and JPEGs simplejpeg refuses, go to Pillow.
- **Pillow path** for PNG, WebP, GIF (first frame), TIFF (first page), BMP, AVIF, and the JPEGs above: a format
  allow-list, header size checked before ``load()``, ``ImageOps.exif_transpose``, every mode mapped to RGB.

Optional batch adapters for NVIDIA DALI (CPU or GPU "mixed" decoder) and torchvision's nvJPEG, each with a
per-sample fallback to the CPU path, are imported lazily. Definitions: ``docs/operators/decode.md``.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nemo_frames.schema import ErrorCode, error_text

__all__ = [
    "DCT_SCALES",
    "DEFAULT_MAX_PIXELS",
    "DecodeError",
    "DecodedImage",
    "apply_orientation",
    "dct_scale",
    "decode_batch",
    "decode_batch_dali",
    "decode_batch_nvjpeg",
    "decode_image",
    "jpeg_orientation",
    "oriented_box",
    "sniff_format",
]

#: Pillow's own default ``Image.MAX_IMAGE_PIXELS`` (1024·1024·1024 // 4 // 3): about 89.5 MP, e.g. 9459×9459.
DEFAULT_MAX_PIXELS = 89_478_485

# Formats decoded here, keyed by our sniffed name, with the Pillow plugins allowed to parse them. MPO is how
# Pillow opens multi-picture camera JPEGs; allowing it keeps those on the JPEG route.
_PIL_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": ("JPEG", "MPO"),
    "PNG": ("PNG",),
    "GIF": ("GIF",),
    "WEBP": ("WEBP",),
    "TIFF": ("TIFF",),
    "BMP": ("BMP",),
    "AVIF": ("AVIF",),
}
# Formats recognised by their magic number but not decoded: reported as ``unsupported_format``.
_UNSUPPORTED_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"mif1",
    b"msf1",
    b"crx ",
    b"jxl ",
}
_AVIF_BRANDS = {b"avif", b"avis"}


class DecodeError(Exception):
    """A per-sample decode failure with a ledger code.

    Parameters
    ----------
    code : ErrorCode
        ``decode_error`` (corrupt or truncated bytes), ``image_too_large`` (pixel cap), or
        ``unsupported_format`` (a recognised format we do not decode, e.g. HEIC).
    message : str
        What was found and, where useful, what to do.

    Examples
    --------
    >>> from nemo_frames.schema import ErrorCode
    >>> err = DecodeError(ErrorCode.DECODE_ERROR, "empty image bytes")
    >>> err.text
    'decode_error: empty image bytes'
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    @property
    def text(self) -> str:
        """The ``nf_error`` value: ``"<code>: <message>"``."""
        return error_text(self.code, self.message)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"DecodeError({self.code.value!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args``; keep both fields when a Dask worker ships one back.
        return (DecodeError, (self.code, self.message))


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Decoded, upright pixels and what the file said about itself.

    Attributes
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` uint8, C-contiguous, RGB, EXIF orientation applied. Smaller than ``width × height`` when a
        ``target`` let the JPEG decoder scale in the DCT domain. (GPU adapters with ``output="device"`` put a
        device array here instead.)
    width, height : int
        Full-resolution size of the upright image (after EXIF orientation), as recorded in the sample table.
    format : str
        ``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``, ``"TIFF"``, ``"BMP"`` or ``"AVIF"``.
    orientation : int
        The EXIF orientation (1–8) that was applied; 1 when absent.
    box : (float, float, float, float) or None
        ``(x0, y0, x1, y1)``: the region of the full-resolution upright image that ``rgb`` spans, in full-size
        pixel units; ``None`` means the whole image ``(0, 0, width, height)``. A DCT-reduced JPEG decode returns
        ``ceil(size · n / 8)`` pixels, each covering exactly ``8 / n`` source pixels, so it spans a little more
        than the image (the last block's padding) and, after a mirroring EXIF orientation, starts before 0.
        Resampling code maps coordinates through this box (:func:`nemo_frames.images.preprocess.preprocess_image`
        does), never through ``width / rgb.shape[1]``, which stretches the image.
    """

    rgb: Any
    width: int
    height: int
    format: str
    orientation: int = 1
    box: tuple[float, float, float, float] | None = None

    @property
    def scale(self) -> float:
        """Decoded short side ÷ full-resolution short side (1.0 without DCT scaling)."""
        h, w = self.rgb.shape[:2]
        return min(h, w) / max(1, min(self.height, self.width))


# --------------------------------------------------------------------------- format sniffing
def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """The image format named by the leading magic bytes, or ``None`` when unrecognised.

    Returns one of the decodable formats (``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``, ``"TIFF"``, ``"BMP"``,
    ``"AVIF"``) or ``"UNSUPPORTED:<name>"`` for a recognised format we do not decode (HEIC, JPEG XL, JPEG 2000,
    PSD, PDF, SVG, ICO).

    Examples
    --------
    >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8))
    'PNG'
    >>> sniff_format(b"hello") is None
    True
    """
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 26:
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF"
        compat = {head[i : i + 4] for i in range(16, min(len(head), 32) - 3, 4)}
        if brand in _UNSUPPORTED_BRANDS and not (compat & _AVIF_BRANDS):
            return "UNSUPPORTED:HEIF"
        if compat & _AVIF_BRANDS:
            return "AVIF"
        return None
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "UNSUPPORTED:JPEG XL"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "UNSUPPORTED:JPEG 2000"
    if head[:4] == b"8BPS":
        return "UNSUPPORTED:PSD"
    if head[:5] == b"%PDF-":
        return "UNSUPPORTED:PDF"
    if head[:4] == b"\x00\x00\x01\x00":
        return "UNSUPPORTED:ICO"
    stripped = head.lstrip()
    if stripped[:4] == b"<svg" or stripped[:5] == b"<?xml":
        return "UNSUPPORTED:SVG"
    return None


# --------------------------------------------------------------------------- EXIF orientation
_XMP_ORIENTATION = re.compile(rb"tiff:Orientation(?:=\"|>)([1-8])")


def _tiff_orientation(buf: bytes) -> int | None:
    """Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block, or None."""
    if buf[:2] == b"II":
        bo = "<"
    elif buf[:2] == b"MM":
        bo = ">"
    else:
        return None
    try:
        (ifd,) = struct.unpack_from(bo + "I", buf, 4)
        (count,) = struct.unpack_from(bo + "H", buf, ifd)
        for k in range(min(count, 1024)):
            tag, typ, _n = struct.unpack_from(bo + "HHI", buf, ifd + 2 + 12 * k)
            if tag == 0x0112:
                # SHORT is the specified type; some writers use LONG.
                fmt = "H" if typ == 3 else "I" if typ == 4 else None
                if fmt is None:
                    return None
                (value,) = struct.unpack_from(bo + fmt, buf, ifd + 2 + 12 * k + 8)
                return int(value) if 1 <= value <= 8 else 1
    except struct.error:
        return None
    return None


def jpeg_orientation(data: bytes | bytearray | memoryview) -> int:
    """The EXIF orientation (1–8) of a JPEG, read from its marker segments without decoding.

    Walks the segments before the first scan: the first APP1 ``Exif`` block's IFD0 orientation tag wins; else
    ``tiff:Orientation`` in an APP1 XMP packet (as Pillow's ``getexif`` does); else 1. Out-of-range values and
    malformed blocks count as 1, as in ``PIL.ImageOps.exif_transpose``.

    Examples
    --------
    >>> jpeg_orientation(b"\\xff\\xd8\\xff\\xd9")
    1
    """
    mv = memoryview(data)
    n = len(mv)
    i = 2
    exif_seen = False
    xmp_value: int | None = None
    while i + 4 <= n:
        if mv[i] != 0xFF:
            break
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
            break
        seglen = (mv[i + 2] << 8) | mv[i + 3]
        if seglen < 2:
            break
        if marker == 0xE1:
            payload = bytes(mv[i + 4 : i + 2 + seglen])
            if payload[:6] == b"Exif\x00\x00" and not exif_seen:
                exif_seen = True
                value = _tiff_orientation(payload[6:])
                if value is not None:
                    return value
            elif payload[:29] == b"http://ns.adobe.com/xap/1.0/\x00" and xmp_value is None:
                m = _XMP_ORIENTATION.search(payload)
                if m:
                    xmp_value = int(m.group(1))
        i += 2 + seglen
    return xmp_value or 1


def _cv2_orient(a: np.ndarray, orientation: int) -> np.ndarray:
    import cv2

    if orientation == 2:
        return cv2.flip(a, 1)
    if orientation == 3:
        return cv2.flip(a, -1)
    if orientation == 4:
        return cv2.flip(a, 0)
    if orientation == 5:
        return cv2.transpose(a)
    if orientation == 6:
        return cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.transpose(cv2.flip(a, -1))
    return cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE)


def apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels stored with EXIF ``orientation`` upright (same result as ``ImageOps.exif_transpose``).

    Returns a C-contiguous array (the input itself for orientation 1 when already contiguous).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    >>> apply_orientation(a, 6).shape
    (3, 2, 1)
    """
    if orientation not in range(2, 9):
        return np.ascontiguousarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] in (3, 4) and rgb.dtype == np.uint8:
        # OpenCV's flips and rotations are ~15× faster than numpy's copy of a reversed or transposed view
        # (0.03 ms vs 0.48 ms at 384×288), which mattered next to a 2 ms reduced decode.
        return _cv2_orient(np.ascontiguousarray(rgb), orientation)
    if orientation == 2:  # mirrored horizontally
        out = rgb[:, ::-1]
    elif orientation == 3:  # rotated 180°
        out = rgb[::-1, ::-1]
    elif orientation == 4:  # mirrored vertically
        out = rgb[::-1]
    elif orientation == 5:  # transposed (mirror over the main diagonal)
        out = rgb.swapaxes(0, 1)
    elif orientation == 6:  # stored rotated 90° counter-clockwise: rotate clockwise
        out = rgb.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:  # transverse (mirror over the anti-diagonal)
        out = rgb[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:  # stored rotated 90° clockwise: rotate counter-clockwise
        out = rgb.swapaxes(0, 1)[::-1]
    else:
        out = rgb
    return np.ascontiguousarray(out)


def oriented_box(
    orientation: int, width: int, height: int, span_w: float, span_h: float
) -> tuple[float, float, float, float]:
    """Where pixels spanning ``[0, span_w) × [0, span_h)`` of a stored ``width × height`` image land once upright.

    ``span`` exceeds the size when a scaled decode's last pixel covers the block padding past the edge; a
    mirroring orientation moves that overhang to the start (negative ``x0``/``y0``). Returns ``(x0, y0, x1, y1)``
    in the upright image's pixel units, matching :func:`apply_orientation`.

    Examples
    --------
    >>> oriented_box(1, 957, 1280, 960.0, 1280.0)
    (0.0, 0.0, 960.0, 1280.0)
    >>> oriented_box(6, 957, 1280, 960.0, 1280.0)  # rotated: the overhang past the stored right edge is at the bottom
    (0.0, 0.0, 1280.0, 960.0)
    >>> oriented_box(2, 957, 1280, 960.0, 1280.0)
    (-3.0, 0.0, 957.0, 1280.0)
    """
    xr = (width - span_w, float(width)) if orientation in (2, 3, 7, 8) else (0.0, float(span_w))
    yr = (height - span_h, float(height)) if orientation in (3, 4, 6, 7) else (0.0, float(span_h))
    if orientation >= 5:
        xr, yr = yr, xr
    return (float(xr[0]), float(yr[0]), float(xr[1]), float(yr[1]))


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first SOF frame header, or None when there is none before the scan."""
    n = len(data)
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):
            return None
        seglen = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF_MARKERS and i + 9 <= n:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        if seglen < 2:
            return None
        i += 2 + seglen
    return None


# --------------------------------------------------------------------------- decode
def _check_pixels(width: int, height: int, max_pixels: int | None, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(ErrorCode.DECODE_ERROR, f"{fmt} header gives an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"{fmt} header says {width}x{height} = {width * height} pixels, above the cap of {max_pixels}; "
            "raise max_pixels if such images are expected",
        )


def _check_truncation_flag() -> None:
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide switch that makes Pillow pad truncated files silently; refusing is the only safe answer.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images would decode as "
            "silently padded pixels; nemo_frames records them as decode_error instead. Set it back to False."
        )


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Alpha-composite straight (non-premultiplied) RGBA over an opaque colour, rounding to nearest."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    if int(alpha.min()) == 255:
        return np.ascontiguousarray(rgba[..., :3])
    bg = np.asarray(background, dtype=np.uint16).reshape(1, 1, 3)
    out = (rgba[..., :3].astype(np.uint16) * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _high_bit_depth_to_u8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        arr = arr.astype(np.float64)
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    # 16-bit (and Pillow's 32-bit "I" holding 16-bit samples): map 0..65535 to 0..255 by rounding v / 257.
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return ((arr + 128) // 257).astype(np.uint8)


def _pil_to_rgb(im: Any, background: tuple[int, int, int]) -> np.ndarray:
    """Any Pillow mode → (H, W, 3) uint8 RGB; alpha composited over ``background``; ICC profiles ignored."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _high_bit_depth_to_u8(np.asarray(im), mode)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    if mode in ("L", "1") and "transparency" in im.info:
        has_alpha = True
    if has_alpha:
        return _composite(np.asarray(im.convert("RGBA")), background)
    return np.asarray(im.convert("RGB"))


def _decode_pil(
    data: bytes, fmt: str, target: int | None, max_pixels: int | None, background: Any
) -> DecodedImage:
    from PIL import Image, ImageOps

    try:
        im = Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS[fmt]))
    except Image.DecompressionBombError as exc:
        raise DecodeError(ErrorCode.IMAGE_TOO_LARGE, f"{fmt}: {exc}") from None
    with im:
        width, height = im.size
        _check_pixels(width, height, max_pixels, fmt)
        if target is not None and im.format in ("JPEG", "MPO"):
            # Pillow's DCT-domain reduction; keeps both sides >= target like the simplejpeg path.
            im.draft(im.mode, (target, target))
        im.load()
        box = None
        dw, dh = im.size
        if (dw, dh) != (width, height):
            # Pillow's draft scales by 1/s (s in 1, 2, 4, 8) and rounds up, like libjpeg: pixel i covers [si, s(i+1)).
            s = next((k for k in (2, 4, 8) if -(-width // k) == dw and -(-height // k) == dh), None)
            if s is None:
                raise DecodeError(
                    ErrorCode.DECODE_ERROR,
                    f"{fmt}: reduced decode gave {dw}x{dh} for a {width}x{height} image, not a 1/2, 1/4 or 1/8 "
                    "scale; decode with target=None",
                )
            box = (0.0, 0.0, float(dw * s), float(dh * s))
        orientation = int(im.getexif().get(0x0112, 1) or 1)
        orientation = orientation if 1 <= orientation <= 8 else 1
        upright = ImageOps.exif_transpose(im) if orientation != 1 else im
        rgb = _pil_to_rgb(upright, background)
    if box is not None and orientation != 1:
        box = oriented_box(orientation, width, height, box[2], box[3])
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(np.ascontiguousarray(rgb), width, height, fmt, orientation, box)


#: DCT scale numerators (n/8) used for reduced decodes. libjpeg-turbo also offers 5/8–7/8, but measured here
#: they are slower than a full decode (3.5 ms vs 1.8 ms at 7/8 of 1024×768), so they are skipped.
DCT_SCALES = (1, 2, 3, 4)


def dct_scale(width: int, height: int, target: int | None) -> int:
    """The numerator n of the JPEG DCT scale n/8 used for ``target``: smallest in :data:`DCT_SCALES` whose
    output keeps both sides ≥ ``target`` (libjpeg-turbo rounds sizes up), else 8 (full size).

    Examples
    --------
    >>> dct_scale(1600, 1200, 224), dct_scale(1024, 768, 224), dct_scale(500, 400, 224)
    (2, 3, 8)
    """
    if not target:
        return 8
    for n in DCT_SCALES:
        if -(-width * n // 8) >= target and -(-height * n // 8) >= target:
            return n
    return 8


def _decode_jpeg_fast(data: bytes, target: int | None, max_pixels: int | None) -> DecodedImage | None:
    """simplejpeg route; ``None`` means "let Pillow decide" (CMYK, or a JPEG libjpeg-turbo is strict about)."""
    import simplejpeg

    try:
        height, width, colorspace, _sub = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        size = _jpeg_frame_size(data)
        if size is not None and 0 in size:
            # libjpeg-turbo and Pillow both fail on this with unrelated messages (Pillow: KeyError 'MPO').
            raise DecodeError(
                ErrorCode.DECODE_ERROR,
                f"JPEG frame header (SOF) says {size[0]}x{size[1]}: an image with no pixels, or a height left "
                "to a later DNL marker, which libjpeg does not support; the file is corrupt or must be re-encoded",
            ) from None
        return None
    _check_pixels(width, height, max_pixels, "JPEG")
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None  # CMYK / YCCK: Pillow handles Adobe's inverted CMYK
    kw: dict[str, int] = {}
    n = dct_scale(width, height, target)
    if n < 8:
        # Ask for exactly n/8: simplejpeg picks the smallest libjpeg-turbo factor meeting both minimums.
        kw = {"min_height": -(-height * n // 8), "min_width": -(-width * n // 8)}
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kw)
    except ValueError:
        return None
    box = None
    dh, dw = rgb.shape[:2]
    if (dw, dh) != (width, height):
        # libjpeg scales by exactly m/8 and rounds the size up: pixel i covers source [8i/m, 8(i+1)/m), the last
        # one partly padding. Recover m from the size rather than trusting which factor simplejpeg chose.
        m = next((k for k in range(1, 9) if -(-width * k // 8) == dw and -(-height * k // 8) == dh), None)
        if m is None:
            return None  # an unexpected output size: let Pillow decode it at full size
        box = (0.0, 0.0, dw * 8 / m, dh * 8 / m)
    orientation = jpeg_orientation(data)
    if orientation != 1:
        rgb = apply_orientation(rgb, orientation)
        if box is not None:
            box = oriented_box(orientation, width, height, box[2], box[3])
        if orientation >= 5:
            width, height = height, width
    return DecodedImage(rgb, width, height, "JPEG", orientation, box)


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    target: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> DecodedImage:
    """Decode image bytes to upright RGB uint8, or raise :class:`DecodeError`.

    Parameters
    ----------
    data : bytes-like
        The encoded image. The format comes from the magic number, not from a file name.
    target : int, optional
        The short side the caller will resize to (e.g. 224 for CLIP). JPEGs are then decoded at the smallest
        libjpeg-turbo scale n/8, n in :data:`DCT_SCALES` (1–4), that keeps **both** sides ≥ ``target`` (never
        below it, so a later resize only shrinks), else at full size. Other formats decode at full size.
        ``None``: full size.
    max_pixels : int or None
        Cap on ``width × height`` read from the header **before** any pixel is decoded; above it the sample is
        ``image_too_large``. Pillow's own bomb check also raises for more than ``2 × Image.MAX_IMAGE_PIXELS``,
        so the effective cap is the smaller of the two. ``None`` disables ours.
    background : tuple of 3 ints
        Colour that transparent pixels (RGBA, LA, palette with transparency) are composited over.

    Returns
    -------
    DecodedImage

    Raises
    ------
    DecodeError
        ``decode_error`` for empty, unrecognised, corrupt or truncated bytes; ``image_too_large`` above the cap;
        ``unsupported_format`` for a recognised format we do not decode.
    RuntimeError
        If ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set (a process-wide setting that pads truncated files).

    Examples
    --------
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.fromarray(np.zeros((600, 800, 3), np.uint8)).save(buf, "JPEG")
    >>> img = decode_image(buf.getvalue(), target=224)
    >>> img.width, img.height, img.rgb.shape
    (800, 600, (225, 300, 3))
    """
    _check_truncation_flag()
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not data:
        raise DecodeError(ErrorCode.DECODE_ERROR, "empty image bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError(
            ErrorCode.DECODE_ERROR,
            f"not a recognised image (first bytes {data[:8].hex()}); expected JPEG, PNG, GIF, WebP, TIFF, BMP or AVIF",
        )
    if fmt.startswith("UNSUPPORTED:"):
        raise DecodeError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"{fmt.split(':', 1)[1]} images are not decoded; convert them to JPEG/PNG/WebP",
        )
    if fmt == "AVIF" and not _avif_available():
        raise DecodeError(
            ErrorCode.UNSUPPORTED_FORMAT,
            "AVIF needs Pillow >= 11.3 built with libavif, or pillow-avif-plugin",
        )
    try:
        if fmt == "JPEG":
            out = _decode_jpeg_fast(data, target, max_pixels)
            if out is not None:
                return out
        return _decode_pil(data, fmt, target, max_pixels, background)
    except DecodeError:
        raise
    except MemoryError as exc:
        raise DecodeError(ErrorCode.IMAGE_TOO_LARGE, f"{fmt}: out of memory while decoding ({exc})") from None
    except Exception as exc:  # any codec failure is a per-sample error, never a crash of the partition
        raise DecodeError(ErrorCode.DECODE_ERROR, f"{fmt}: {type(exc).__name__}: {exc}") from None


_AVIF: bool | None = None


def _avif_available() -> bool:
    global _AVIF
    if _AVIF is None:
        from PIL import features

        ok = bool(features.check("avif"))
        if not ok:
            try:
                import pillow_avif  # noqa: F401  (registers the plugin)

                ok = True
            except ImportError:
                ok = False
        _AVIF = ok
    return _AVIF


def _decode_or_error(data: Any, **kw: Any) -> DecodedImage | DecodeError:
    try:
        return decode_image(data, **kw)
    except DecodeError as err:
        return err


def decode_batch(
    datas: Sequence[bytes | bytearray | memoryview | None],
    *,
    target: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    num_threads: int = 1,
) -> list[DecodedImage | DecodeError]:
    """Decode many images; a failure is returned in its slot as a :class:`DecodeError`, never raised.

    Parameters
    ----------
    datas : sequence of bytes (``None`` counts as missing bytes: ``decode_error``)
    target, max_pixels, background
        As in :func:`decode_image`.
    num_threads : int
        Threads to decode with (libjpeg-turbo and Pillow release the GIL). Keep 1 inside Dask workers that
        already run one task per core.

    Examples
    --------
    >>> out = decode_batch([b"", b"not an image"])
    >>> [o.code.value for o in out]
    ['decode_error', 'decode_error']
    """
    kw = {"target": target, "max_pixels": max_pixels, "background": background}
    items = [b"" if d is None else d for d in datas]
    if num_threads <= 1 or len(items) < 2:
        return [_decode_or_error(d, **kw) for d in items]
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        return list(pool.map(lambda d: _decode_or_error(d, **kw), items))


# --------------------------------------------------------------------------- GPU / DALI adapters
def _jpeg_precheck(
    datas: Sequence[Any], max_pixels: int | None
) -> tuple[list[int], list[DecodedImage | DecodeError | None], list[tuple[int, int, int]]]:
    """Split a batch: indices of plain (non-CMYK) JPEGs within the cap go to the accelerated decoder."""
    import simplejpeg

    out: list[DecodedImage | DecodeError | None] = [None] * len(datas)
    fast: list[int] = []
    meta: list[tuple[int, int, int]] = []
    for i, d in enumerate(datas):
        d = bytes(d) if d is not None else b""
        if sniff_format(d) == "JPEG":
            try:
                h, w, cs, _ = simplejpeg.decode_jpeg_header(d)
            except ValueError:
                cs = ""
            if cs in ("YCbCr", "Gray", "RGB"):
                try:
                    _check_pixels(w, h, max_pixels, "JPEG")
                except DecodeError as err:
                    out[i] = err
                    continue
                fast.append(i)
                meta.append((w, h, jpeg_orientation(d)))
    return fast, out, meta


def _finish_fallback(
    datas: Sequence[Any], out: list[Any], fallback: Callable[[Any], DecodedImage | DecodeError]
) -> list[DecodedImage | DecodeError]:
    for i, o in enumerate(out):
        if o is None:
            out[i] = fallback(datas[i] if datas[i] is not None else b"")
    return out


_DALI_PIPES: dict[tuple[Any, ...], Any] = {}


def _dali_pipeline(batch_size: int, device: str, num_threads: int, device_id: int | None) -> Any:
    key = (batch_size, device, num_threads, device_id)
    pipe = _DALI_PIPES.get(key)
    if pipe is None:
        from nemo_frames.backend import require

        dali = require("nvidia.dali", "dali", "decode_batch_dali")
        fn, types = dali.fn, dali.types

        @dali.pipeline_def(
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def _pipe() -> Any:
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(raw, device=device, output_type=types.RGB, adjust_orientation=True)

        pipe = _pipe()
        pipe.build()
        _DALI_PIPES[key] = pipe
    return pipe


def decode_batch_dali(
    datas: Sequence[bytes | bytearray | memoryview | None],
    *,
    device: Literal["cpu", "mixed"] = "cpu",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    num_threads: int = 1,
    device_id: int | None = None,
    output: Literal["numpy", "device"] = "numpy",
) -> list[DecodedImage | DecodeError]:
    """Decode a batch with NVIDIA DALI's image decoder, falling back to :func:`decode_image` per sample.

    Plain JPEGs within the pixel cap go to ``fn.decoders.image`` (``device="cpu"``: libjpeg-turbo in DALI's
    thread pool, runs without a GPU with ``device_id=None``; ``device="mixed"``: nvJPEG / the hardware JPEG
    engine, needs ``device_id``). Everything else (PNG, alpha, CMYK, bombs) takes the CPU path. DALI fails a
    whole batch on one bad JPEG, so a failed batch is rebuilt and its JPEGs re-decoded one by one on the CPU
    path, which records the bad one. DALI decodes at full size (no DCT scaling).

    Parameters
    ----------
    datas : sequence of bytes
    device : {"cpu", "mixed"}
    max_pixels, background
        As in :func:`decode_image` (checked from the header before DALI sees the bytes).
    num_threads : int
        DALI CPU threads.
    device_id : int or None
        CUDA device for ``"mixed"``; ``None`` for a CPU-only pipeline.
    output : {"numpy", "device"}
        ``"device"`` keeps "mixed" outputs on the GPU (``rgb`` is then a DALI ``TensorGPU``; use
        ``nvidia.dali.plugin.pytorch.feed_ndarray`` or DLPack to hand it to torch).

    Examples
    --------
    >>> out = decode_batch_dali([jpeg_bytes])  # doctest: +SKIP
    """
    if device == "mixed" and device_id is None:
        device_id = 0
    fast, out, meta = _jpeg_precheck(datas, max_pixels)

    def fallback(d: Any) -> DecodedImage | DecodeError:
        return _decode_or_error(d, max_pixels=max_pixels, background=background)

    if fast:
        _check_truncation_flag()
        batch = [np.frombuffer(bytes(datas[i]), dtype=np.uint8) for i in fast]
        key_bs = max(len(batch), 1)
        pipe = _dali_pipeline(key_bs, device, num_threads, device_id)
        try:
            pipe.feed_input("raw", batch)
            (decoded,) = pipe.run()
            if device == "mixed" and output == "numpy":
                decoded = decoded.as_cpu()
            for j, i in enumerate(fast):
                w, h, orient = meta[j]
                if orient >= 5:
                    w, h = h, w
                px = decoded[j]
                px = np.ascontiguousarray(np.asarray(px)) if (output == "numpy" or device == "cpu") else px
                out[i] = DecodedImage(px, w, h, "JPEG", orient)
        except Exception:
            # The pipeline object is unusable after a failed batch: drop it, decode this batch one by one.
            _DALI_PIPES.pop((key_bs, device, num_threads, device_id), None)
            for i in fast:
                out[i] = fallback(datas[i])
    return _finish_fallback(datas, out, fallback)


def decode_batch_nvjpeg(
    datas: Sequence[bytes | bytearray | memoryview | None],
    *,
    device: str = "cuda",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    output: Literal["numpy", "device"] = "numpy",
) -> list[DecodedImage | DecodeError]:
    """Decode a batch of JPEGs with torchvision's nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``).

    Same contract as :func:`decode_batch_dali`: plain JPEGs within the cap are decoded in one batched call with
    EXIF orientation applied; other formats and any batch failure fall back to :func:`decode_image` per sample.

    Parameters
    ----------
    datas : sequence of bytes
    device : str
        Torch CUDA device.
    max_pixels, background
        As in :func:`decode_image`.
    output : {"numpy", "device"}
        ``"device"`` keeps each image as an ``(H, W, 3)`` uint8 CUDA tensor.

    Examples
    --------
    >>> out = decode_batch_nvjpeg([jpeg_bytes])  # doctest: +SKIP
    """
    from nemo_frames.backend import require

    torch = require("torch", "clip", "decode_batch_nvjpeg")
    tvio = require("torchvision.io", "clip", "decode_batch_nvjpeg")
    fast, out, meta = _jpeg_precheck(datas, max_pixels)

    def fallback(d: Any) -> DecodedImage | DecodeError:
        return _decode_or_error(d, max_pixels=max_pixels, background=background)

    if fast:
        tensors = [torch.frombuffer(bytearray(bytes(datas[i])), dtype=torch.uint8) for i in fast]
        try:
            decoded = tvio.decode_jpeg(
                tensors, mode=tvio.ImageReadMode.RGB, device=device, apply_exif_orientation=True
            )
            for j, i in enumerate(fast):
                w, h, orient = meta[j]
                if orient >= 5:
                    w, h = h, w
                hwc = decoded[j].permute(1, 2, 0)
                px = hwc.contiguous() if output == "device" else np.ascontiguousarray(hwc.cpu().numpy())
                out[i] = DecodedImage(px, w, h, "JPEG", orient)
        except Exception:
            for i in fast:
                out[i] = fallback(datas[i])
    return _finish_fallback(datas, out, fallback)
