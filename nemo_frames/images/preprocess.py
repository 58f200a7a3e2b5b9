"""CLIP input batches from decoded pixels, matched to open_clip's own (PIL) transform within a measured error.

open_clip's eval transform is ``Resize(S, bicubic)`` (short side → S, long side ``int(S·long/short)``) →
``CenterCrop(S)`` → ``ToTensor`` → ``Normalize(mean, std)``. The fast path keeps that geometry exactly but starts
from the DCT-reduced JPEG decode of :func:`nemo_frames.images.decode.decode_image` (short side already in
``[S, 2S)`` for most web images), maps the crop window to the decoded pixels through
:attr:`~nemo_frames.images.decode.DecodedImage.box` (libjpeg's scaled pixels cover ``8/n`` source pixels each,
not ``size / decoded size``), and resamples only that window, so work and memory follow the output size.
Upscaling always uses Pillow's bicubic (the model's own filter, exact). Errors against open_clip's preprocess
are measured in ``benchmarks/decode_preprocess.py`` and listed in ``docs/operators/decode.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nemo_frames.images.decode import DecodedImage

__all__ = [
    "DEFAULT_RESAMPLE",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ClipPreprocess",
    "crop_geometry",
    "params_from_open_clip",
    "preprocess_batch",
    "preprocess_image",
]

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

Resample = Literal["auto", "cv2-cubic", "cv2-area", "cv2-linear", "pil-bicubic"]

#: The resample used when none is given, here and in :class:`nemo_frames.scoring.ScoreConfig`: the fastest mode
#: within the error budget (measured in ``benchmarks/decode_preprocess.py``).
DEFAULT_RESAMPLE: Resample = "cv2-linear"

#: ``resample="auto"``: above this remaining reduction ratio (decoded short side ÷ resized short side), OpenCV's
#: cubic, which does not antialias, drifts from Pillow's antialiased bicubic; Pillow resamples the crop box there.
AUTO_CV2_MAX_RATIO = 1.3


@dataclass(frozen=True)
class ClipPreprocess:
    """What a CLIP model expects as input.

    Attributes
    ----------
    size : int or (int, int)
        Resize target. An int resizes the **short side** to it (aspect kept, torchvision's rule: the long side
        becomes ``int(size · long / short)``); an ``(h, w)`` pair squashes to exactly that size.
    crop : (int, int)
        ``(h, w)`` of the centre crop taken after the resize (torchvision's offsets:
        ``int(round((H − h) / 2))``). Must fit inside the resized image.
    mean, std : 3 floats
        Per-channel normalisation of pixels scaled to [0, 1].
    interpolation : {"bicubic", "bilinear"}
        The model's own resize filter (what the ``pil-bicubic`` resample reproduces; the OpenCV resamples are
        chosen by measured error, not by name).

    Examples
    --------
    >>> p = ClipPreprocess()
    >>> p.size, p.crop
    (224, (224, 224))
    """

    size: int | tuple[int, int] = 224
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    @property
    def decode_target(self) -> int:
        """The short side a JPEG may be DCT-reduced to without going below what the resize needs."""
        if isinstance(self.size, int):
            return self.size
        return max(self.size)


def params_from_open_clip(preprocess: Any) -> ClipPreprocess:
    """Read size, crop, mean, std and interpolation from an open_clip eval ``preprocess`` (a ``Compose``).

    Understands torchvision ``Resize`` (int: short side; ``(h, w)``: squash), ``CenterCrop``, ``Normalize``
    and the mode/tensor conversions open_clip adds. Anything else (``resize_mode="longest"``'s
    ``ResizeKeepRatio`` / ``CenterCropOrPad``, training augmentations) raises ``ValueError``: use the model's
    own preprocess for those.

    Examples
    --------
    >>> import open_clip  # doctest: +SKIP
    >>> _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)  # doctest: +SKIP
    >>> params_from_open_clip(pre).crop  # doctest: +SKIP
    (224, 224)
    """
    transforms = getattr(preprocess, "transforms", None)
    if transforms is None:
        raise ValueError(
            f"expected a torchvision Compose (open_clip preprocess), found {type(preprocess).__name__}"
        )
    size: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean, std = OPENAI_MEAN, OPENAI_STD
    interpolation = "bicubic"
    for t in transforms:
        name = type(t).__name__
        if name == "Resize":
            s = t.size
            if isinstance(s, int) or (isinstance(s, (list, tuple)) and len(s) == 1):
                size = int(s if isinstance(s, int) else s[0])
            else:
                size = (int(s[0]), int(s[1]))
            if getattr(t, "max_size", None) is not None:
                raise ValueError("Resize(max_size=...) is not supported by the fast preprocess path")
            mode = str(getattr(t.interpolation, "value", t.interpolation)).lower()
            if mode not in ("bicubic", "bilinear"):
                raise ValueError(f"Resize interpolation {mode!r} is not supported (bicubic or bilinear)")
            interpolation = mode
        elif name == "CenterCrop":
            c = t.size
            crop = (int(c[0]), int(c[1])) if isinstance(c, (list, tuple)) else (int(c), int(c))
        elif name == "Normalize":
            mean = tuple(float(v) for v in t.mean)  # type: ignore[assignment]
            std = tuple(float(v) for v in t.std)  # type: ignore[assignment]
        elif name in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "ConvertImageDtype", "PILToTensor"):
            continue
        elif name == "Lambda" and "convert" in repr(getattr(t, "lambd", "")):
            continue  # older open_clip: lambda image: image.convert("RGB")
        else:
            raise ValueError(
                f"transform {name} is not supported by the fast preprocess path (supported: Resize, CenterCrop, "
                "Normalize); run the model's own preprocess for this model"
            )
    if size is None:
        raise ValueError("the preprocess has no Resize; cannot derive the input size")
    if crop is None:
        crop = (size, size) if isinstance(size, int) else size
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"expected 3-channel mean/std, found {mean} / {std}")
    return ClipPreprocess(size=size, crop=crop, mean=mean, std=std, interpolation=interpolation)  # type: ignore[arg-type]


def crop_geometry(width: int, height: int, params: ClipPreprocess) -> tuple[int, int, int, int]:
    """``(resized_w, resized_h, left, top)`` of torchvision's Resize + CenterCrop for a ``width × height`` image.

    Examples
    --------
    >>> crop_geometry(1024, 768, ClipPreprocess())
    (298, 224, 37, 0)
    """
    if isinstance(params.size, int):
        s = params.size
        if width <= height:
            nw, nh = s, int(s * height / width)
        else:
            nw, nh = int(s * width / height), s
    else:
        nh, nw = params.size
    ch, cw = params.crop
    if ch > nh or cw > nw:
        raise ValueError(
            f"crop {params.crop} does not fit in the resized {nh}x{nw} image (padding not supported)"
        )
    return nw, nh, round((nw - cw) / 2.0), round((nh - ch) / 2.0)


def _crop_box(
    shape: tuple[int, ...],
    width: int,
    height: int,
    box: tuple[float, float, float, float] | None,
    params: ClipPreprocess,
) -> tuple[float, float, float, float]:
    """torchvision's Resize + CenterCrop window, in the pixel coordinates of ``rgb`` (a scaled copy, see ``box``)."""
    nw, nh, left, top = crop_geometry(width, height, params)
    ch, cw = params.crop
    h, w = shape[:2]
    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(width), float(height))
    kx, ky = w / (x1 - x0), h / (y1 - y0)
    sx, sy = width / nw, height / nh  # full-size pixels per resized pixel, per axis (torchvision truncates)
    return (
        max(0.0, (left * sx - x0) * kx),
        max(0.0, (top * sy - y0) * ky),
        min(float(w), ((left + cw) * sx - x0) * kx),
        min(float(h), ((top + ch) * sy - y0) * ky),
    )


def _window(
    rgb: np.ndarray,
    win: tuple[float, float, float, float],
    margin: tuple[float, float],
    align: tuple[int, int] = (1, 1),
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The part of ``rgb`` a filter reading ``margin`` (x, y) pixels around ``win`` touches, and ``win`` relative
    to it.

    Cropping first bounds the work and the memory by the output size, not by the image (a 1×12000 strip
    resized torchvision's way is 224 × 2 688 000 pixels). ``align`` (x, y): start and size multiples of it,
    within the image (a partial last block at the image edge is left out).
    """
    h, w = rgb.shape[:2]

    def span(lo: float, hi: float, m: float, a: int, size: int) -> tuple[int, int]:
        start = max(0, int(np.floor(lo - m)) // a * a)
        stop = min(size, int(np.ceil(hi + m)))
        stop = start + max(a, -(-(stop - start) // a) * a)
        return start, min(stop, start + (size - start) // a * a)

    c0, c1 = span(win[0], win[2], margin[0], align[0], w)
    r0, r1 = span(win[1], win[3], margin[1], align[1], h)
    return rgb[r0:r1, c0:c1], (win[0] - c0, win[1] - r0, win[2] - c0, win[3] - r0)


def _pil_resize(
    rgb: np.ndarray, win: tuple[float, float, float, float], size: tuple[int, int], interpolation: str
) -> np.ndarray:
    """Pillow's antialiased resample of window ``win`` straight to ``size`` (w, h): torchvision's own filter."""
    from PIL import Image

    ratio = max((win[2] - win[0]) / size[0], (win[3] - win[1]) / size[1], 1.0)
    support = (2.0 if interpolation == "bicubic" else 1.0) * ratio + 2.0
    part, pwin = _window(rgb, win, (support, support))
    flt = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    # Pillow resamples a source box with the same filter support as resizing the whole image and cropping
    # afterwards, so only the crop is computed; the window keeps everything the filter reads.
    box = (
        max(0.0, pwin[0]),
        max(0.0, pwin[1]),
        min(float(part.shape[1]), pwin[2]),
        min(float(part.shape[0]), pwin[3]),
    )
    return np.asarray(Image.fromarray(np.ascontiguousarray(part)).resize(size, flt, box=box))


def _resize_crop(
    rgb: np.ndarray,
    width: int,
    height: int,
    params: ClipPreprocess,
    resample: Resample,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """(crop_h, crop_w, 3) uint8: ``rgb`` (any scale of a ``width × height`` image) resized and centre-cropped."""
    import cv2

    if resample not in Resample.__args__:  # type: ignore[attr-defined]
        raise ValueError(f"resample must be one of {Resample.__args__}, got {resample!r}")  # type: ignore[attr-defined]
    ch, cw = params.crop
    win = _crop_box(rgb.shape, width, height, box, params)
    rx, ry = (win[2] - win[0]) / cw, (win[3] - win[1]) / ch  # source pixels per output pixel
    if resample == "auto":
        resample = "cv2-cubic" if min(rx, ry) <= AUTO_CV2_MAX_RATIO else "pil-bicubic"
    if resample == "pil-bicubic" or max(rx, ry) <= 1.0:
        # Upscaling (and the exact mode): Pillow's filter is the model's own, and on <= 1× it reads 4 × 4 pixels
        # per output pixel, so it costs little more than OpenCV's.
        return _pil_resize(rgb, win, (cw, ch), params.interpolation)
    if resample == "cv2-area":
        # INTER_AREA cannot start at a fractional offset: the window is rounded to whole source pixels.
        part = rgb[round(win[1]) : round(win[3]), round(win[0]) : round(win[2])]
        return cv2.resize(np.ascontiguousarray(part), (cw, ch), interpolation=cv2.INTER_AREA)
    # Cubic/linear sampling without antialiasing aliases beyond 2× reduction: pre-shrink each axis by the
    # integer box factor that leaves a ratio in [1, 2) (what the DCT-domain decode already does for most JPEGs).
    fx, fy = (int(r) if r >= 2.0 else 1 for r in (rx, ry))
    part, pwin = _window(rgb, win, (2.0 * fx + 2.0, 2.0 * fy + 2.0), align=(fx, fy))
    if fx > 1 or fy > 1:
        ph, pw = part.shape[:2]
        part = cv2.resize(part, (pw // fx, ph // fy), interpolation=cv2.INTER_AREA)
        pwin = (pwin[0] / fx, pwin[1] / fy, pwin[2] / fx, pwin[3] / fy)
    ax, ay = (pwin[2] - pwin[0]) / cw, (pwin[3] - pwin[1]) / ch
    # Inverse map: output pixel centre (x + 0.5) lands on pwin[0] + (x + 0.5)·ax in continuous source
    # coordinates, i.e. pixel index pwin[0] + (x + 0.5)·ax − 0.5; replicate at the image edges as resize does.
    m = np.array([[ax, 0.0, pwin[0] + 0.5 * ax - 0.5], [0.0, ay, pwin[1] + 0.5 * ay - 0.5]])
    flag = cv2.INTER_CUBIC if resample == "cv2-cubic" else cv2.INTER_LINEAR
    return cv2.warpAffine(
        np.ascontiguousarray(part),
        m,
        (cw, ch),
        flags=flag | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _normaliser(params: ClipPreprocess) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(params.std, dtype=np.float64)
    mean = np.asarray(params.mean, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def _as_parts(
    img: DecodedImage | np.ndarray,
) -> tuple[np.ndarray, int, int, tuple[float, float, float, float] | None]:
    if isinstance(img, DecodedImage):
        return img.rgb, img.width, img.height, img.box
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, found shape {arr.shape} dtype {arr.dtype}")
    return arr, arr.shape[1], arr.shape[0], None


def preprocess_image(
    img: DecodedImage | np.ndarray,
    params: ClipPreprocess | None = None,
    *,
    resample: Resample = DEFAULT_RESAMPLE,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One image → a normalised float32 ``(3, crop_h, crop_w)`` array.

    Parameters
    ----------
    img : DecodedImage or numpy.ndarray
        A :class:`DecodedImage` (possibly DCT-reduced: its ``width``/``height`` give the full-size geometry) or
        an ``(H, W, 3)`` uint8 RGB array at full size.
    params : ClipPreprocess, optional
        Defaults to OpenAI CLIP at 224 px.
    resample : {"cv2-linear", "auto", "cv2-cubic", "cv2-area", "pil-bicubic"}
        How the crop window is resampled when it is reduced (upscaling is always Pillow's bicubic, exact):
        ``cv2-linear`` (default): OpenCV bilinear warp of the window, pre-shrunk by an integer ``INTER_AREA``
        factor when the reduction is ≥ 2×; the fastest within the error budget. ``pil-bicubic``: Pillow's
        antialiased bicubic over the window, the closest to open_clip (exact from full-size pixels), about
        0.8 ms slower. ``cv2-cubic``: OpenCV bicubic warp. ``auto``: ``cv2-cubic`` up to a
        :data:`AUTO_CV2_MAX_RATIO` reduction, else ``pil-bicubic``. ``cv2-area``: ``INTER_AREA`` over the
        window rounded to whole pixels. Measured errors and speeds: ``docs/operators/decode.md``.
    out : numpy.ndarray, optional
        A float32 ``(3, crop_h, crop_w)`` array to write into (e.g. a row of a batch).

    Examples
    --------
    >>> import numpy as np
    >>> x = preprocess_image(np.full((300, 400, 3), 128, np.uint8))
    >>> x.shape, x.dtype
    ((3, 224, 224), dtype('float32'))
    """
    import cv2

    params = params or ClipPreprocess()
    rgb, width, height, box = _as_parts(img)
    crop = _resize_crop(rgb, width, height, params, resample, box)
    ch, cw = params.crop
    if out is None:
        out = np.empty((3, ch, cw), dtype=np.float32)
    scale, offset = _normaliser(params)
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(crop))):
        np.multiply(plane, scale[c], out=out[c], dtype=np.float32)
        out[c] += offset[c]
    return out


def preprocess_batch(
    images: Sequence[DecodedImage | np.ndarray],
    params: ClipPreprocess | None = None,
    *,
    resample: Resample = DEFAULT_RESAMPLE,
) -> np.ndarray:
    """Many images → one C-contiguous float32 ``(N, 3, crop_h, crop_w)`` batch (torch conversion is the caller's).

    Examples
    --------
    >>> import numpy as np
    >>> preprocess_batch([np.zeros((240, 320, 3), np.uint8)] * 2).shape
    (2, 3, 224, 224)
    """
    params = params or ClipPreprocess()
    ch, cw = params.crop
    batch = np.empty((len(images), 3, ch, cw), dtype=np.float32)
    for i, img in enumerate(images):
        preprocess_image(img, params, resample=resample, out=batch[i])
    return batch
