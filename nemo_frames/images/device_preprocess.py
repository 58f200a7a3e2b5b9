"""CLIP preprocessing on a torch device, for images decoded there (nvJPEG).

The CPU fast path (:mod:`nemo_frames.images.preprocess`) works on numpy arrays; an image that
nvJPEG decoded into GPU memory would have to come back to the host for it and go out again as a
batch. Here the same geometry (:func:`~nemo_frames.images.preprocess.crop_geometry`: resize the
short side, centre crop with torchvision's offsets) runs on the tensor where it lies, with
torch's antialiased bicubic / bilinear resize, and the batch stays on the device for the model.
torch is imported inside the function, so importing this module is free.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from nemo_frames.images.decode import DecodedImage
from nemo_frames.images.preprocess import ClipPreprocess, crop_geometry

__all__ = ["decode_preprocess_on_device", "preprocess_batch_torch"]


def _hwc_tensor(img: Any, torch: Any, device: Any) -> tuple[Any, int, int, tuple[float, float, float, float]]:
    """(H, W, 3) uint8 tensor on ``device``, the image's full-size (width, height) and the box its pixels span."""
    if isinstance(img, DecodedImage):
        rgb, width, height = img.rgb, img.width, img.height
        box = img.box or (0.0, 0.0, float(width), float(height))
    else:
        rgb = img
        width, height = int(rgb.shape[1]), int(rgb.shape[0])
        box = (0.0, 0.0, float(width), float(height))
    t = rgb if isinstance(rgb, torch.Tensor) else torch.from_numpy(rgb)
    if t.ndim != 3 or t.shape[2] != 3 or t.dtype != torch.uint8:
        raise ValueError(
            "preprocess_batch_torch: expected (H, W, 3) uint8 RGB images, found shape "
            f"{tuple(t.shape)} dtype {t.dtype}; decode with decode_batch_nvjpeg(output='device') or decode_image"
        )
    return t.to(device, non_blocking=True), width, height, box


def preprocess_batch_torch(
    images: Sequence[DecodedImage | Any],
    params: ClipPreprocess | None = None,
    *,
    device: Any = None,
) -> Any:
    """Images (torch tensors on any device, or numpy) → a normalised float32 ``(N, 3, h, w)`` tensor.

    Parameters
    ----------
    images : sequence of DecodedImage, torch.Tensor or numpy.ndarray
        ``(H, W, 3)`` uint8 RGB at full size, e.g. from
        :func:`~nemo_frames.images.decode.decode_batch_nvjpeg` with ``output="device"``.
    params : ClipPreprocess, optional
        The model's size, crop, mean, std and filter (default: OpenAI CLIP at 224 px).
    device : torch.device or str, optional
        Where the batch is built (default: the first image's device).

    Returns
    -------
    torch.Tensor
        On ``device``. The resized pixels are rounded to whole levels, as a uint8 resize would.

    Examples
    --------
    >>> import numpy as np
    >>> x = preprocess_batch_torch([np.full((300, 400, 3), 128, np.uint8)])
    >>> tuple(x.shape), str(x.dtype), str(x.device)
    ((1, 3, 224, 224), 'torch.float32', 'cpu')
    """
    import torch
    import torch.nn.functional as F

    params = params or ClipPreprocess()
    ch, cw = params.crop
    if device is None:
        first = images[0].rgb if images and isinstance(images[0], DecodedImage) else (images[0] if images else None)
        device = first.device if isinstance(first, torch.Tensor) else "cpu"
    out = torch.empty((len(images), 3, ch, cw), dtype=torch.float32, device=device)
    mean = torch.tensor(params.mean, dtype=torch.float32, device=device).view(3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(params.std, dtype=torch.float32, device=device).view(3, 1, 1) * 255.0)
    mode = "bicubic" if params.interpolation == "bicubic" else "bilinear"
    for i, img in enumerate(images):
        t, width, height, (x0, y0, x1, y1) = _hwc_tensor(img, torch, device)
        nw, nh, left, top = crop_geometry(width, height, params)
        x = t.permute(2, 0, 1).unsqueeze(0).float()
        # The pixels span the box (x0, y0, x1, y1) of the full-size image (a DCT-scaled decode spans its last
        # block's padding too): scale them so that one pixel is one pixel of the resized image, then crop at
        # the box's offset. Mapping through width / rgb width instead would stretch the image.
        sx, sy = nw / width, nh / height
        fx, fy = (x1 - x0) * sx / x.shape[-1], (y1 - y0) * sy / x.shape[-2]
        if abs(fx - 1) > 1e-9 or abs(fy - 1) > 1e-9:
            # A hair over the exact factor so that floor(size * factor) cannot fall one pixel short.
            x = F.interpolate(x, scale_factor=(fy * (1 + 1e-9), fx * (1 + 1e-9)), mode=mode,
                              align_corners=False, antialias=True, recompute_scale_factor=False)
        ox, oy = round(left - x0 * sx), round(top - y0 * sy)
        x = x[0, :, oy : oy + ch, ox : ox + cw].round_().clamp_(0, 255)
        if x.shape[1:] != (ch, cw):
            raise ValueError(
                f"preprocess_batch_torch: image {i} ({width}x{height}, pixels spanning box {(x0, y0, x1, y1)}) "
                f"does not cover the {ch}x{cw} crop; this is a bug, please report it with the image"
            )
        out[i] = (x - mean) * inv_std
    return out


_STREAMS = threading.local()


def decode_preprocess_on_device(
    datas: Sequence[Any], params: ClipPreprocess, *, device: Any, max_pixels: int | None, preprocess: bool = True
) -> tuple[list[Any], Any]:
    """nvJPEG-decode a chunk and build its CLIP batch on ``device``: ``(decoded or DecodeError per item, batch)``.

    On CUDA the work runs on a side stream of the calling thread, which is synchronised before the
    batch is handed over, and the batch is marked as used by the default stream. torchvision's
    CUDA decoder writes on a private stream without waiting for the caller's stream, so it could
    be handed a freed block that queued kernels (another chunk's forward pass) still read; on a
    stream of its own with nothing queued, it cannot. ``batch`` is None when nothing decoded.
    """
    import torch

    from nemo_frames.images.decode import DecodeError, decode_batch_nvjpeg

    dev = torch.device(device)
    if dev.type != "cuda":
        res = decode_batch_nvjpeg(datas, device=str(dev), max_pixels=max_pixels, output="device")
        good = [d for d in res if not isinstance(d, DecodeError)]
        return res, (preprocess_batch_torch(good, params, device=dev) if good and preprocess else None)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    stream = getattr(_STREAMS, "stream", None)
    if stream is None or stream.device != dev:
        stream = _STREAMS.stream = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(stream):
        res = decode_batch_nvjpeg(datas, device=str(dev), max_pixels=max_pixels, output="device")
        good = [d for d in res if not isinstance(d, DecodeError)]
        batch = preprocess_batch_torch(good, params, device=dev) if good and preprocess else None
    stream.synchronize()
    if batch is not None:
        batch.record_stream(torch.cuda.default_stream(dev))
    return res, batch
