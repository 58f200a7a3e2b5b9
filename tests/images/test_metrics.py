"""Blur, QR-code area ratio, pHash, content hash, Hamming distance — on real photos and real QR images."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from nemo_frames.images.decode import decode_image
from nemo_frames.images.metrics import (
    blur_score,
    content_hash,
    hamming,
    phash,
    phash_hex,
    qr_area_ratio,
    qr_polygons,
)
from tests._assets import assets_path


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    import skimage.data as sd

    return {
        "astronaut": sd.astronaut(),
        "chelsea": sd.chelsea(),
        "coffee": sd.coffee(),
        "rocket": sd.rocket(),
        "motorcycle": sd.stereo_motorcycle()[0],
        "hubble": sd.hubble_deep_field(),
    }


# --------------------------------------------------------------------------- blur
def test_blur_definition_is_laplacian_variance_over_rgb(photos):
    rgb = photos["coffee"]
    lap = cv2.Laplacian(rgb, cv2.CV_64F)
    assert blur_score(rgb) == pytest.approx(float(lap.var()))
    # explicit 3x3 kernel with reflect-101 borders, all three channels pooled
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    manual = np.stack(
        [
            cv2.filter2D(rgb[..., c].astype(np.float64), -1, k, borderType=cv2.BORDER_REFLECT_101)
            for c in range(3)
        ],
        -1,
    )
    assert blur_score(rgb) == pytest.approx(float(manual.var()), rel=1e-9)
    assert blur_score(np.full((20, 20, 3), 7, np.uint8)) == 0.0


def test_blurred_photos_score_lower(photos):
    for name, rgb in photos.items():
        sharp = blur_score(rgb)
        soft = blur_score(cv2.GaussianBlur(rgb, (0, 0), 2.0))
        softer = blur_score(cv2.GaussianBlur(rgb, (0, 0), 4.0))
        assert sharp > soft > softer, name
        assert soft < 0.5 * sharp, name


@pytest.mark.integration
def test_img2dataset_blurred_variant_scores_lower():
    """img2dataset's resize_no.jpg is the same 389x535 photo with one region (test_bbox.parquet) blurred."""
    original = decode_image(assets_path("images-clip-retrieval", "389_535.jpg").read_bytes()).rgb
    variant = decode_image(assets_path("images-img2dataset", "resize_no.jpg").read_bytes()).rgb
    assert variant.shape == original.shape
    assert blur_score(variant) < 0.9 * blur_score(original)  # measured: 979 vs 1295
    # the blurred box (x0, y0, x1, y1 as fractions) is where the two differ
    h, w = original.shape[:2]
    x0, y0, x1, y1 = (round(v) for v in (0.601542 * w, 0.413084 * h, 0.856041 * w, 0.611215 * h))
    box_o, box_v = original[y0:y1, x0:x1], variant[y0:y1, x0:x1]
    assert blur_score(box_v) < 0.5 * blur_score(box_o)


# --------------------------------------------------------------------------- QR codes
@pytest.mark.integration
def test_qr_recall_and_false_positives_on_zxing():
    root = assets_path("images-zxing-qrcode")
    pos = neg = hits = fps = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.png")):
            ratio = qr_area_ratio(decode_image(f.read_bytes()).rgb)
            assert 0.0 <= ratio <= 1.0
            if folder.name.startswith("qrcode"):
                pos += 1
                hits += ratio > 0
            elif folder.name.startswith("falsepositives"):
                neg += 1
                fps += ratio > 0
    assert pos >= 50 and neg >= 40
    # measured: 57/62 = 91.9% recall, 0/47 false positives (benchmarks/qr_recall.py)
    assert hits / pos >= 0.85
    assert fps / neg <= 0.05


def test_qr_ratio_of_a_generated_code_on_a_photo(photos):
    qrcode = pytest.importorskip("qrcode")
    code = np.asarray(
        qrcode.make("https://example.org/nemo-frames").convert("RGB").resize((200, 200), Image.NEAREST)
    )
    canvas = photos["astronaut"].copy()
    canvas[100:300, 150:350] = code
    ratio = qr_area_ratio(canvas)
    # the detected polygon is the code minus its quiet zone, within the pasted square
    assert 0.5 * (200 * 200) / canvas[..., 0].size < ratio <= (200 * 200) / canvas[..., 0].size
    polys = qr_polygons(canvas)
    assert polys.shape == (1, 4, 2)
    assert qr_area_ratio(photos["astronaut"]) == 0.0
    assert qr_area_ratio(canvas, method="detect") == pytest.approx(ratio, rel=0.05)


# --------------------------------------------------------------------------- pHash
def test_phash_identical_images_equal_and_different_photos_far(photos):
    hashes = {n: phash(rgb) for n, rgb in photos.items()}
    assert all(isinstance(h, np.uint64) for h in hashes.values())
    assert phash(photos["coffee"].copy()) == hashes["coffee"]
    names = list(hashes)
    dists = [hamming(hashes[a], hashes[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
    assert min(dists) >= 16, dists


def test_phash_near_duplicates_close(photos):
    for name, rgb in photos.items():
        h = phash(rgb)
        smaller = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2)))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=60)
        recompressed = decode_image(buf.getvalue()).rgb
        reduced = decode_image(buf.getvalue(), target=64).rgb  # DCT-reduced decode
        assert hamming(h, phash(smaller)) <= 6, name
        assert hamming(h, phash(recompressed)) <= 6, name
        assert hamming(h, phash(reduced)) <= 8, name


def test_phash_bits_equal_imagededup(photos):
    hashing = pytest.importorskip("imagededup.methods")
    ph = hashing.PHash(verbose=False)
    for name, rgb in photos.items():
        assert phash_hex(phash(rgb)) == ph.encode_image(image_array=rgb), name


@pytest.mark.integration
def test_phash_equal_imagededup_on_ukbench_files():
    hashing = pytest.importorskip("imagededup.methods")
    ph = hashing.PHash(verbose=False)
    root = assets_path("images-imagededup", "base_images")
    for f in sorted(root.glob("*.jpg"))[:6]:
        ours = phash_hex(phash(decode_image(f.read_bytes()).rgb))
        assert ours == ph.encode_image(image_file=str(f)), f.name


# --------------------------------------------------------------------------- content hash, hamming
def test_content_hash_is_sha256_of_bytes():
    import hashlib

    data = b"\xff\xd8\xff" + bytes(range(256)) * 10
    assert content_hash(data) == hashlib.sha256(data).hexdigest()
    assert content_hash(bytearray(data)) == content_hash(memoryview(data))
    assert content_hash(data) != content_hash(data[:-1])


@pytest.mark.integration
def test_content_hash_finds_exact_duplicates_across_folders():
    root = assets_path("images-imagededup")
    a = content_hash((root / "base_images" / "ukbench00120.jpg").read_bytes())
    b = content_hash((root / "mixed_images" / "ukbench00120.jpg").read_bytes())
    c = content_hash((root / "mixed_images" / "ukbench00120_hflip.jpg").read_bytes())
    assert a == b != c


def test_hamming_scalars_and_arrays():
    assert hamming(np.uint64(0), np.uint64(2**64 - 1)) == 64
    assert hamming(5, 5) == 0
    a = np.array([0, 1, 2**63], np.uint64)
    assert hamming(a, np.uint64(1)).tolist() == [1, 0, 2]
    assert hamming(a[:, None], a[None, :]).shape == (3, 3)


def test_metrics_reject_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        blur_score(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        phash(np.zeros((4, 4, 4), np.uint8))
