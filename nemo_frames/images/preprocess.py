"""CLIP input batches from decoded pixels, matched to open_clip's own (PIL) transform within a measured error.

open_clip's eval transform is ``Resize(S, bicubic)`` (short side → S, long side ``int(S·long/short)``) →
``CenterCrop(S)`` → ``ToTensor`` → ``Normalize(mean, std)``. The fast path keeps that geometry exactly but starts
from the DCT-reduced JPEG decode of :func:`nemo_frames.images.decode.decode_image` (short side already in
``[S, 2S)`` for most web images) and resizes with OpenCV, which is several times cheaper than Pillow's bicubic
on the full-size image. Errors against open_clip's preprocess are measured in ``benchmarks/decode_preprocess.py``
and listed in ``docs/operators/decode.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nemo_frames.images.decode import DecodedImage

__all__ = [
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


def _resize_crop(
    rgb: np.ndarray, width: int, height: int, params: ClipPreprocess, resample: Resample
) -> np.ndarray:
    """(crop_h, crop_w, 3) uint8: ``rgb`` (any scale of a ``width × height`` image) resized and centre-cropped."""
    import cv2

    nw, nh, left, top = crop_geometry(width, height, params)
    ch, cw = params.crop
    h, w = rgb.shape[:2]
    if resample == "auto":
        resample = "cv2-cubic" if min(w / nw, h / nh) <= AUTO_CV2_MAX_RATIO else "pil-bicubic"
    if resample == "pil-bicubic":
        from PIL import Image

        # Pillow resamples a source box straight to the crop size with the same filter support as resizing
        # the whole image and cropping afterwards, so only the crop is computed.
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        flt = Image.Resampling.BICUBIC if params.interpolation == "bicubic" else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(rgb).resize((cw, ch), flt, box=box))
    if resample == "cv2-cubic" or resample == "cv2-linear":
        # Cubic/linear sampling without antialiasing aliases beyond ~2× reduction: pre-shrink by an integer
        # box factor first (what the DCT-domain decode does for JPEGs anyway).
        factor = min(w // (2 * nw), h // (2 * nh))
        if factor >= 2:
            rgb = cv2.resize(rgb, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
        flag = cv2.INTER_CUBIC if resample == "cv2-cubic" else cv2.INTER_LINEAR
    elif resample == "cv2-area":
        flag = cv2.INTER_AREA
    else:
        raise ValueError(f"resample must be one of {Resample.__args__}, got {resample!r}")  # type: ignore[attr-defined]
    resized = rgb if (w, h) == (nw, nh) else cv2.resize(rgb, (nw, nh), interpolation=flag)
    return resized[top : top + ch, left : left + cw]


def _normaliser(params: ClipPreprocess) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(params.std, dtype=np.float64)
    mean = np.asarray(params.mean, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def _as_parts(img: DecodedImage | np.ndarray) -> tuple[np.ndarray, int, int]:
    if isinstance(img, DecodedImage):
        return img.rgb, img.width, img.height
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, found shape {arr.shape} dtype {arr.dtype}")
    return arr, arr.shape[1], arr.shape[0]


def preprocess_image(
    img: DecodedImage | np.ndarray,
    params: ClipPreprocess | None = None,
    *,
    resample: Resample = "auto",
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
    resample : {"cv2-cubic", "cv2-area", "cv2-linear", "pil-bicubic"}
        ``cv2-cubic`` (default) is the fastest within the error budget; ``pil-bicubic`` is the closest to
        open_clip (Pillow's bicubic over only the crop box), about 1 ms slower per image.
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
    rgb, width, height = _as_parts(img)
    crop = _resize_crop(rgb, width, height, params, resample)
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
    resample: Resample = "auto",
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
