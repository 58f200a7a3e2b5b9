"""CLIP preprocessing: parameters read from open_clip, geometry, and error against open_clip's own transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from nemo_frames.images.decode import decode_image
from nemo_frames.images.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    ClipPreprocess,
    crop_geometry,
    params_from_open_clip,
    preprocess_batch,
    preprocess_image,
)

open_clip = pytest.importorskip(
    "open_clip", reason="open_clip_torch not installed (extra: nemo-frames[clip])"
)


@pytest.fixture(scope="module")
def openclip_pre():
    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return pre


@pytest.fixture(scope="module")
def web_jpegs() -> list[bytes]:
    """scikit-image photos at web sizes, re-encoded as JPEG (q90, 4:2:0)."""
    import skimage.data as sd

    out = []
    for name, size in [
        ("astronaut", (1024, 768)),
        ("coffee", (1600, 1200)),
        ("rocket", (768, 1024)),
        ("chelsea", (640, 480)),
        ("hubble_deep_field", (1000, 872)),
        ("immunohistochemistry", (500, 340)),
    ]:
        a = getattr(sd, name)()
        buf = io.BytesIO()
        Image.fromarray(a).resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_params_from_open_clip(openclip_pre):
    p = params_from_open_clip(openclip_pre)
    assert p == ClipPreprocess(
        size=224, crop=(224, 224), mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic"
    )
    sq = open_clip.image_transform(256, is_train=False, resize_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3)
    p2 = params_from_open_clip(sq)
    assert p2.size == (256, 256) and p2.crop == (256, 256) and p2.mean == (0.5, 0.5, 0.5)
    longest = open_clip.image_transform(224, is_train=False, resize_mode="longest")
    with pytest.raises(ValueError, match="not supported"):
        params_from_open_clip(longest)


def test_geometry_matches_torchvision(openclip_pre):
    resize, crop = openclip_pre.transforms[0], openclip_pre.transforms[1]
    p = params_from_open_clip(openclip_pre)
    rng = np.random.default_rng(0)
    for w, h in [(1024, 768), (768, 1024), (333, 500), (224, 224), (225, 1000), (100, 57), (227, 227)]:
        r = resize(Image.new("RGB", (w, h)))
        nw, nh, left, top = crop_geometry(w, h, p)
        assert r.size == (nw, nh)
        noise = Image.fromarray(rng.integers(0, 256, (nh, nw, 3), dtype=np.uint8))
        np.testing.assert_array_equal(
            np.asarray(crop(noise)), np.asarray(noise)[top : top + 224, left : left + 224]
        )


@pytest.mark.parametrize("resample", ["auto", "pil-bicubic", "cv2-cubic", "cv2-area"])
def test_error_budget_vs_open_clip(openclip_pre, web_jpegs, resample):
    """DCT-reduced decode + our resize stays within 2/255 mean abs error of open_clip's PIL preprocess."""
    p = params_from_open_clip(openclip_pre)
    std = np.asarray(p.std, np.float32)[:, None, None]
    errs = []
    for data in web_jpegs:
        ref = openclip_pre(Image.open(io.BytesIO(data))).numpy()
        ours = preprocess_image(decode_image(data, target=p.decode_target), p, resample=resample)
        assert ours.shape == ref.shape == (3, 224, 224) and ours.dtype == np.float32
        errs.append(float(np.abs((ours - ref) * std).mean()))  # back in [0, 1] pixel space
    assert np.mean(errs) <= 2 / 255, [round(e * 255, 2) for e in errs]
    assert max(errs) <= 3.5 / 255


def test_full_size_input_and_normalisation_exact(openclip_pre):
    """From the same (full) pixels with Pillow's resample, the only difference is float rounding."""
    import skimage.data as sd

    rgb = sd.coffee()
    p = params_from_open_clip(openclip_pre)
    ref = openclip_pre(Image.fromarray(rgb)).numpy()
    ours = preprocess_image(rgb, p, resample="pil-bicubic")
    assert np.abs(ours - ref).max() < 1e-5


def test_orientation_applied_before_crop(openclip_pre):
    """A rotated file preprocesses like its upright twin (same error against open_clip on the upright image)."""
    import skimage.data as sd

    rgb = np.asarray(Image.fromarray(sd.astronaut()).resize((900, 600)))
    std = np.asarray(OPENAI_STD, np.float32)[:, None, None]
    errs = {}
    for orientation, pixels in (
        (1, rgb),
        (6, np.rot90(rgb, 1)),
    ):  # orientation 6 stores the image turned left
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=95, exif=exif.tobytes())
        data = buf.getvalue()
        ref = openclip_pre(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).numpy()
        ours = preprocess_image(decode_image(data, target=224))
        errs[orientation] = float(np.abs((ours - ref) * std).mean())
        upright = openclip_pre(Image.fromarray(rgb)).numpy()
        assert np.abs((ours - upright) * std).mean() < 3.5 / 255
    assert errs[6] < 3.5 / 255 and abs(errs[6] - errs[1]) < 0.5 / 255


def test_batch_shape_and_contiguity(web_jpegs):
    imgs = [decode_image(d, target=224) for d in web_jpegs]
    batch = preprocess_batch(imgs)
    assert batch.shape == (len(imgs), 3, 224, 224) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[2], preprocess_image(imgs[2]))


def test_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="resample"):
        preprocess_image(np.zeros((300, 300, 3), np.uint8), resample="nearest")  # type: ignore[arg-type]
