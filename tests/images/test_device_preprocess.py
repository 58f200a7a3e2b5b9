"""CLIP preprocessing on a torch device (for nvJPEG-decoded images), checked against the CPU path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nemo_frames.images.decode import DecodedImage, decode_batch_nvjpeg, decode_image  # noqa: E402
from nemo_frames.images.device_preprocess import preprocess_batch_torch  # noqa: E402
from nemo_frames.images.preprocess import ClipPreprocess, preprocess_batch  # noqa: E402

# One grey level in OpenAI-normalised units is 1 / (255 * std) ~ 0.015.
LEVEL = 1 / (255 * min(ClipPreprocess().std))


def test_matches_the_cpu_path_on_real_photos(jpegs):
    imgs = [decode_image(b) for b in jpegs.values()]
    ref = preprocess_batch(imgs, resample="pil-bicubic")  # open_clip's own filter
    out = preprocess_batch_torch(imgs)
    assert out.shape == ref.shape and out.dtype == torch.float32
    diff = np.abs(out.numpy() - ref)
    # Antialiased torch bicubic vs Pillow's bicubic: about a grey level on average.
    assert diff.mean() < 0.5 * LEVEL, diff.mean() / LEVEL  # 0.16 measured
    assert np.percentile(diff, 99) < 2 * LEVEL


def test_torchvision_decoded_tensors_and_dct_scaled_images_agree():
    from tests.conftest import encode, photos

    datas = [encode(rgb, quality=90) for rgb in photos().values()]  # full size: 224 px allows 1/2 DCT scale
    assert any(decode_image(b, target=224).rgb.shape[0] < decode_image(b).height for b in datas)
    tensors = decode_batch_nvjpeg(datas, device="cpu", output="device")  # torchvision, CPU libjpeg
    assert all(isinstance(d.rgb, torch.Tensor) for d in tensors)
    full = preprocess_batch_torch(tensors)
    # A DCT-reduced decode keeps the full-size width/height, so the geometry is the same.
    scaled = [decode_image(b, target=224) for b in datas]
    diff = np.abs(full.numpy() - preprocess_batch_torch(scaled).numpy()).mean(axis=(1, 2, 3)) / LEVEL
    assert diff.max() < 2.5, diff  # the DCT-domain reduction filters differently: 0-2 levels measured
    # The motorcycle's 741 px width decodes to 371 px spanning 742 source px (the last block's padding):
    # mapping through the box, not width / decoded width, keeps it in place (3.9 levels off when stretched).
    padded = [i for i, d in enumerate(scaled) if d.box is not None and d.box[2] > d.width]
    assert padded
    for i in padded:
        d = scaled[i]
        stretched = DecodedImage(d.rgb, d.width, d.height, d.format, d.orientation, None)
        off = np.abs(full.numpy()[i] - preprocess_batch_torch([stretched]).numpy()[0]).mean() / LEVEL
        assert off > 1.5 * diff[i], (off, diff[i])


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess_batch_torch([np.zeros((10, 10), np.uint8)])


@pytest.mark.gpu
def test_on_cuda_matches_cpu(jpegs):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    datas = list(jpegs.values())
    gpu = decode_batch_nvjpeg(datas, device="cuda", output="device")
    out = preprocess_batch_torch(gpu)
    assert out.device.type == "cuda"
    ref = preprocess_batch_torch([decode_image(b) for b in datas])
    assert np.abs(out.cpu().numpy() - ref.numpy()).mean() < 2 * LEVEL
