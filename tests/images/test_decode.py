"""Decoding: formats, EXIF orientation, pixel cap, truncation, per-sample errors, DALI / nvJPEG adapters."""

from __future__ import annotations

import io
import pickle
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from nemo_frames.images.decode import (
    DecodedImage,
    DecodeError,
    apply_orientation,
    dct_scale,
    decode_batch,
    decode_batch_dali,
    decode_batch_nvjpeg,
    decode_image,
    jpeg_orientation,
    sniff_format,
)
from nemo_frames.schema import ErrorCode
from tests._assets import assets_path


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height, with one tiny IDAT: a decompression-bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- every real edge case
def _edge_files():
    root = assets_path("images-pillow-edgecases")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() != ".txt")
    files.append(assets_path("images-imagededup", "mixed_images", "ukbench09268_corrupt.jpg"))
    files += sorted(assets_path("images-imagededup", "formats_images").iterdir())
    files.append(assets_path("images-imagededup", "alpha_channel_image.png"))
    return files


@pytest.mark.integration
def test_every_edge_case_decodes_or_records_a_typed_error():
    results = {}
    for path in _edge_files():
        data = path.read_bytes()
        for target in (None, 64):
            try:
                img = decode_image(data, target=target)
            except DecodeError as err:
                results[(path.name, target)] = err.code
                continue
            assert isinstance(img, DecodedImage)
            assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3
            assert img.rgb.flags.c_contiguous
            assert img.width > 0 and img.height > 0
            results[(path.name, target)] = "ok"
    assert results[("truncated_jpeg.jpg", None)] == ErrorCode.DECODE_ERROR
    assert results[("truncated_jpeg.jpg", 64)] == ErrorCode.DECODE_ERROR
    assert results[("ukbench09268_corrupt.jpg", None)] == ErrorCode.DECODE_ERROR
    ok = {name for (name, t), r in results.items() if r == "ok" and t is None}
    for name in (
        "pil_sample_cmyk.jpg",
        "16bit.cropped.tif",
        "apng_mode_16bit.png",
        "apng_mode_grayscale_alpha.png",
        "hopper.gif",
        "hopper.webp",
        "avif_hopper.avif",
        "icc_profile.png",
        "ukbench09380.png",
    ):
        assert name in ok, f"{name} should decode"


@pytest.mark.integration
def test_decode_batch_records_errors_per_sample():
    files = _edge_files()
    datas = [p.read_bytes() for p in files] + [b"", None, b"garbage bytes"]
    out = decode_batch(datas, target=128)
    assert len(out) == len(datas)
    assert all(isinstance(o, (DecodedImage, DecodeError)) for o in out)
    assert [o.code for o in out[-3:]] == [ErrorCode.DECODE_ERROR] * 3
    threaded = decode_batch(datas, target=128, num_threads=2)
    for a, b in zip(out, threaded, strict=True):
        assert type(a) is type(b)
        if isinstance(a, DecodedImage):
            np.testing.assert_array_equal(a.rgb, b.rgb)


@pytest.mark.integration
def test_formats_match_pillow_pixels():
    """Plain 8-bit files decode to exactly Pillow's RGB pixels (JPEG through libjpeg-turbo too)."""
    root = assets_path("images-pillow-edgecases")
    for name in (
        "hopper.jpg",
        "hopper.png",
        "hopper.gif",
        "hopper.webp",
        "pil_sample_rgb.jpg",
        "pil_sample_cmyk.jpg",
    ):
        data = (root / name).read_bytes()
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(decode_image(data).rgb, ref, err_msg=name)


# --------------------------------------------------------------------------- EXIF orientation
@pytest.mark.integration
@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientations_come_out_upright(orientation):
    root = assets_path("images-pillow-edgecases")
    data = (root / f"hopper_orientation_{orientation}.jpg").read_bytes()
    assert jpeg_orientation(data) == orientation
    assert jpeg_orientation(data) == Image.open(io.BytesIO(data)).getexif().get(0x0112)
    img = decode_image(data)
    assert img.orientation == orientation
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(img.rgb, ref)
    # ...and looks like the un-rotated original (same photo, re-encoded, so only JPEG noise differs)
    upright = np.asarray(Image.open(root / "hopper.jpg").convert("RGB")).astype(np.int16)
    assert np.abs(img.rgb.astype(np.int16) - upright).mean() < 8


def test_orientation_on_non_square_photo_swaps_size(astronaut):
    rgb = astronaut[:300, :500]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = _jpeg(rgb, quality=95, exif=exif.tobytes())
        img = decode_image(data, target=100)
        full = decode_image(data)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        np.testing.assert_array_equal(full.rgb, ref)
        assert (full.width, full.height) == (ref.shape[1], ref.shape[0])
        assert (img.width, img.height) == (full.width, full.height)
        # reduced decode keeps the upright aspect ratio
        assert (img.rgb.shape[1] > img.rgb.shape[0]) == (ref.shape[1] > ref.shape[0])


def test_apply_orientation_matches_pillow_transpose():
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pil = Image.fromarray(arr)
    methods = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
    for o, m in methods.items():
        np.testing.assert_array_equal(apply_orientation(arr, o), np.asarray(pil.transpose(m)))
    assert apply_orientation(arr, 1) is arr


# --------------------------------------------------------------------------- reduced (DCT) decode
def test_target_decodes_smallest_scale_at_or_above_target(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((1600, 1200)))
    data = _jpeg(big, quality=90)
    img = decode_image(data, target=224)
    assert (img.width, img.height) == (1600, 1200)
    assert img.rgb.shape == (300, 400, 3)  # 2/8; 1/8 would give 150 < 224
    assert dct_scale(1600, 1200, 224) == 2
    assert dct_scale(1024, 768, 224) == 3
    assert dct_scale(1024, 768, 300) == 4
    assert dct_scale(700, 500, 300) == 8  # 5/8..7/8 are slower than a full decode, never used
    full = decode_image(data)
    assert full.rgb.shape == (1200, 1600, 3)
    # the reduced image is the full image, smaller
    import cv2

    shrunk = cv2.resize(full.rgb, (400, 300), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(shrunk - img.rgb).mean() < 3


# --------------------------------------------------------------------------- bombs and truncation
def test_pixel_cap_bomb_header_is_rejected_quickly_without_allocating():
    data = _png_header_only(100_000, 100_000)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.code == ErrorCode.IMAGE_TOO_LARGE
    assert elapsed < 0.5
    assert peak < 5_000_000  # a decode would need 30 GB


def test_pixel_cap_is_ours_and_checked_from_header(astronaut):
    png = _png(astronaut)  # 512 x 512 = 262144 pixels
    jpg = _jpeg(astronaut)
    for data in (png, jpg):
        with pytest.raises(DecodeError) as info:
            decode_image(data, max_pixels=512 * 511)
        assert info.value.code == ErrorCode.IMAGE_TOO_LARGE
        assert "512x512" in info.value.message
        assert decode_image(data, max_pixels=512 * 512).rgb.shape == (512, 512, 3)


def test_jpeg_header_bomb_rejected(astronaut):
    data = bytearray(_jpeg(astronaut[:16, :16]))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)  # height, width in SOF0
    with pytest.raises(DecodeError) as info:
        decode_image(bytes(data))
    assert info.value.code == ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_truncated_jpeg_is_an_error_not_padding(astronaut, cut):
    data = _jpeg(astronaut, quality=90)
    short = data[: int(len(data) * cut)]
    for target in (None, 224, 64):
        with pytest.raises(DecodeError) as info:
            decode_image(short, target=target)
        assert info.value.code == ErrorCode.DECODE_ERROR


def test_truncated_png_is_an_error(astronaut):
    data = _png(astronaut)
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.code == ErrorCode.DECODE_ERROR


def test_load_truncated_images_flag_is_refused(astronaut, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(_jpeg(astronaut))


# --------------------------------------------------------------------------- modes and formats
def test_alpha_is_composited_on_background():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left opaque red, right fully transparent
    data = _png(rgba)
    white = decode_image(data).rgb
    assert (white[:, :4] == [200, 0, 0]).all() and (white[:, 4:] == 255).all()
    black = decode_image(data, background=(0, 0, 0)).rgb
    assert (black[:, 4:] == 0).all()
    la = Image.fromarray(np.full((4, 4), 100, np.uint8)).convert("LA")
    la.putalpha(128)
    buf = io.BytesIO()
    la.save(buf, "PNG")
    assert (decode_image(buf.getvalue()).rgb == (100 * 128 + 255 * 127 + 127) // 255).all()


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((4, 4), 65535 // 2, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    rgb = decode_image(buf.getvalue()).rgb
    assert rgb.shape == (4, 4, 3)
    assert (rgb == 127).all()  # Pillow's convert("RGB") would give 255


def test_grayscale_and_palette_become_rgb(astronaut):
    gray = astronaut[..., 1].copy()
    img = decode_image(_jpeg(gray))
    assert img.rgb.shape == (512, 512, 3)
    assert (img.rgb[..., 0] == img.rgb[..., 2]).all()
    pal = Image.fromarray(astronaut).quantize(64)
    buf = io.BytesIO()
    pal.save(buf, "GIF")
    np.testing.assert_array_equal(decode_image(buf.getvalue()).rgb, np.asarray(pal.convert("RGB")))


def test_format_comes_from_bytes_not_name_and_unsupported_is_typed():
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    with pytest.raises(DecodeError) as info:
        decode_image(heic)
    assert info.value.code == ErrorCode.UNSUPPORTED_FORMAT
    with pytest.raises(DecodeError) as info:
        decode_image(b"%PDF-1.7 ...")
    assert info.value.code == ErrorCode.UNSUPPORTED_FORMAT


def test_decode_error_text_and_pickle():
    err = DecodeError(ErrorCode.IMAGE_TOO_LARGE, "too big")
    assert err.text == "image_too_large: too big" == str(err)
    back = pickle.loads(pickle.dumps(err))
    assert back.code == ErrorCode.IMAGE_TOO_LARGE and back.message == "too big"


# --------------------------------------------------------------------------- DALI / nvJPEG adapters
def _mixed_batch(astronaut) -> list[bytes]:
    good = _jpeg(astronaut[:200, :300], quality=90)
    return [good, good[: len(good) // 2], _png(astronaut[:50, :60]), _png_header_only(50_000, 50_000), good]


def test_dali_cpu_matches_cpu_path_and_falls_back_per_sample(astronaut):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda120 not installed (extra: nemo-frames[dali])")
    batch = _mixed_batch(astronaut)
    out = decode_batch_dali(batch, device="cpu")
    ref = decode_batch(batch)
    assert [type(o) for o in out] == [type(r) for r in ref]
    assert out[1].code == ErrorCode.DECODE_ERROR and out[3].code == ErrorCode.IMAGE_TOO_LARGE
    for o, r in zip(out, ref, strict=True):
        if isinstance(o, DecodedImage):
            assert o.rgb.shape == r.rgb.shape and (o.width, o.height) == (r.width, r.height)
            assert np.abs(o.rgb.astype(np.int16) - r.rgb).max() <= 2
    # a clean batch after a failed one: the pipeline was rebuilt
    clean = decode_batch_dali([batch[0], batch[4]], device="cpu")
    assert all(isinstance(o, DecodedImage) for o in clean)


@pytest.mark.integration
def test_dali_cpu_applies_exif_orientation():
    pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda120 not installed")
    root = assets_path("images-pillow-edgecases")
    datas = [(root / f"hopper_orientation_{k}.jpg").read_bytes() for k in range(2, 9)]
    for o, r in zip(decode_batch_dali(datas), decode_batch(datas), strict=True):
        np.testing.assert_array_equal(o.rgb, r.rgb)


@pytest.mark.gpu
def test_dali_mixed_on_gpu(astronaut):
    pytest.importorskip("nvidia.dali")
    from nemo_frames.backend import cuda_device_present

    if not cuda_device_present():
        pytest.skip("no CUDA device")  # DALI's CUDA wheel installs on CPU machines too
    batch = _mixed_batch(astronaut)
    out = decode_batch_dali(batch, device="mixed", device_id=0)
    ref = decode_batch(batch)
    assert [type(o) for o in out] == [type(r) for r in ref]
    assert np.abs(out[0].rgb.astype(np.int16) - ref[0].rgb).mean() < 2


@pytest.mark.gpu
def test_nvjpeg_on_gpu(astronaut):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    batch = _mixed_batch(astronaut)
    out = decode_batch_nvjpeg(batch)
    ref = decode_batch(batch)
    assert [type(o) for o in out] == [type(r) for r in ref]
    assert np.abs(out[0].rgb.astype(np.int16) - ref[0].rgb).mean() < 2


# --------------------------------------------------------------------------- scaled-decode geometry (issue 15)
@pytest.mark.parametrize(
    ("orientation", "box"),
    [
        (1, (0.0, 0.0, 1280.0, 960.0)),  # 957 rows → ceil(957/4) = 240 scaled rows spanning 960 source rows
        (2, (0.0, 0.0, 1280.0, 960.0)),
        (3, (0.0, -3.0, 1280.0, 957.0)),  # turned 180°: the padding row comes first
        (4, (0.0, -3.0, 1280.0, 957.0)),
        (5, (0.0, 0.0, 960.0, 1280.0)),
        (6, (-3.0, 0.0, 957.0, 1280.0)),
        (7, (-3.0, 0.0, 957.0, 1280.0)),
        (8, (0.0, 0.0, 960.0, 1280.0)),
    ],
)
def test_scaled_decode_records_the_source_box(astronaut, orientation, box):
    stored = np.asarray(Image.fromarray(astronaut).resize((1280, 957)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(stored, quality=90, exif=exif.tobytes())
    img = decode_image(data, target=224)
    assert img.box == box
    h, w = img.rgb.shape[:2]
    assert (w, h) == ((320, 240) if orientation < 5 else (240, 320))
    # each scaled pixel covers exactly 4 source pixels: the box is the decoded size × 4
    assert (box[2] - box[0], box[3] - box[1]) == (4.0 * w, 4.0 * h)
    assert decode_image(data).box is None  # full-size decode: the whole image
    # Pillow's draft path (the JPEG fallback) records the same geometry
    from nemo_frames.images.decode import _decode_pil

    pil = _decode_pil(data, "JPEG", 224, None, (255, 255, 255))
    assert pil.box == box and pil.rgb.shape == img.rgb.shape


def test_zero_size_jpeg_frame_header_is_a_clear_error(astronaut):
    """A SOF header saying 0×0 used to surface as ``decode_error: JPEG: KeyError: 'MPO'``."""
    data = bytearray(_jpeg(astronaut[:64, :64], quality=90))
    sof = data.find(b"\xff\xc0")
    for height, width in [(0, 0), (16, 0), (0, 16)]:
        struct.pack_into(">HH", data, sof + 5, height, width)
        with pytest.raises(DecodeError) as exc:
            decode_image(bytes(data))
        assert exc.value.code is ErrorCode.DECODE_ERROR
        assert f"JPEG frame header (SOF) says {width}x{height}" in exc.value.text
        assert "KeyError" not in exc.value.text
