from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nemo_frames.dedup import hamming_pairs, perceptual_duplicates, phash_image
from tests._assets import assets_path


def _rgb(path) -> np.ndarray:
    im = Image.open(path)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGBA").convert("RGB"))


def _frame(paths) -> pd.DataFrame:
    return pd.DataFrame({"key": [p.stem for p in paths], "phash": np.array([phash_image(_rgb(p)) for p in paths], np.uint64)})


# imagededup 0.3.3 PHash().encode_image(image_file=<the photo saved as PNG>)
IMAGEDEDUP_PHASH = {
    "astronaut": "c2924c5d32bddfc8",
    "chelsea": "b15fe6465121975e",
    "coffee": "bb8320376c0f3677",
    "rocket": "c0371bec1bed1267",
    "camera": "bff1c1c0434e8cbe",
}
# the same for shared assets (images-imagededup)
IMAGEDEDUP_PHASH_ASSETS = {
    "mixed_images/ukbench00120.jpg": "9fee256239984d71",
    "mixed_images/ukbench00120_hflip.jpg": "cabb7237e8cd3824",
    "mixed_images/ukbench00120_resize.jpg": "9fee25623c984d71",
    "mixed_images/ukbench00120_rotation.jpg": "850d513c4fdcbb72",
    "ukbench00120_gray.jpg": "9fee256239984d71",
    "alpha_channel_image.png": "9fee256239984d71",
}


def test_phash_matches_imagededup_bits(tmp_path):
    from skimage import data

    for name, ref in IMAGEDEDUP_PHASH.items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        assert f"{phash_image(_rgb(path)):016x}" == ref, name
    folder = assets_path("images-imagededup")
    for rel, ref in IMAGEDEDUP_PHASH_ASSETS.items():
        assert f"{phash_image(_rgb(folder / rel)):016x}" == ref, rel


def test_phash_rejects_bad_shapes_and_accepts_gray():
    from skimage import data

    with pytest.raises(ValueError, match="expected an"):
        phash_image(np.zeros((4, 4, 2), np.uint8))
    gray = data.camera()
    assert phash_image(gray) == phash_image(np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.slow  # imports imagededup (and torch through it): ~25 s on a busy machine
def test_phash_matches_imagededup_live(tmp_path):
    from imagededup.methods import PHash
    from skimage import data

    ph = PHash(verbose=False)
    for name in IMAGEDEDUP_PHASH:
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        assert f"{phash_image(_rgb(path)):016x}" == ph.encode_image(image_file=path), name


def _random_hashes(rng, n, planted, zeros):
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    src = rng.integers(0, n, planted)
    flips = [rng.choice(64, rng.integers(0, 13), replace=False) for _ in range(planted)]
    near = np.array([int(h[s]) ^ sum(1 << int(b) for b in f) for s, f in zip(src, flips, strict=True)], dtype=np.uint64)
    return np.concatenate([h, near, np.zeros(zeros, np.uint64)])


@pytest.mark.parametrize("t", [0, 1, 4, 10, 14])
def test_index_search_equals_brute_force(t):
    h = _random_hashes(np.random.default_rng(t), 3000, 600, 5)
    ref = hamming_pairs(h, threshold=t, method="brute")
    got = hamming_pairs(h, threshold=t, method="index")
    pd.testing.assert_frame_equal(got, ref)
    assert (got["distance"] <= t).all() and (got["i"] < got["j"]).all()
    if t:
        assert got.attrs["layout"] != "brute"


def test_index_search_handles_skewed_buckets():
    # near-blank images: many distinct hashes sharing their high bits, plus exact repeats
    rng = np.random.default_rng(1)
    skew = rng.integers(0, 2**12, 4000, dtype=np.uint64)  # only the low 12 bits vary
    h = np.concatenate([skew, _random_hashes(rng, 2000, 100, 0)])
    u = np.unique(h)
    got = hamming_pairs(u, threshold=3, method="index", distinct=True)
    ref = hamming_pairs(u, threshold=3, method="brute", distinct=True)
    pd.testing.assert_frame_equal(got, ref)


def test_giant_bucket_of_blank_images_is_not_quadratic():
    rng = np.random.default_rng(2)
    h = np.concatenate([np.zeros(200_000, np.uint64), rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)])
    df = pd.DataFrame({"key": [f"k{i:07d}" for i in range(len(h))], "phash": h})
    t0 = time.perf_counter()
    t = perceptual_duplicates(df, threshold=10)
    assert time.perf_counter() - t0 < 20  # 2e10 pairs if the zeros were compared pairwise
    blank = t[t["key"] == "k0000000"]["group_id"].iloc[0]
    assert (t["group_id"] == blank).sum() >= 200_000
    assert t.loc[t.is_survivor & (t.group_id == blank), "key"].tolist() == ["k0000000"]
    assert t.attrs["distinct_hashes"] <= 5001


def test_ukbench_variants_at_t10():
    folder = assets_path("images-imagededup")
    paths = [*sorted((folder / "mixed_images").glob("ukbench00120*.jpg")), folder / "ukbench00120_gray.jpg"]
    paths += [folder / "base_images" / "ukbench01380.jpg"]
    df = _frame(paths)
    t = perceptual_duplicates(df, threshold=10)
    group = set(t.loc[t.group_id == "ukbench00120", "key"])
    # pHash is robust to resizing and to dropping colour, not to mirroring or rotation
    assert group == {"ukbench00120", "ukbench00120_resize", "ukbench00120_gray"}
    row = t.set_index("key").loc["ukbench00120_resize"]
    assert row.matched_key == "ukbench00120" and row.max_similarity == pytest.approx(1 - 2 / 64)


def test_img2dataset_resize_variants():
    paths = sorted(assets_path("images-img2dataset").glob("*.jpg"))
    df = _frame(paths)
    at10 = {frozenset(g["key"]) for _, g in perceptual_duplicates(df, threshold=10).groupby("group_id")}
    assert at10 == {frozenset({"resize_keep_ratio", "resize_keep_ratio_largest", "resize_no"})}
    # the center crop is 12 bits away, the padded border 18-20: a chain forms one group at 12
    at12 = perceptual_duplicates(df, threshold=12)
    assert set(at12["key"]) == {p.stem for p in paths} - {"resize_border"}


@pytest.mark.slow  # imports imagededup (and torch through it)
def test_same_pairs_as_imagededup_search():
    from imagededup.methods import PHash

    h = _random_hashes(np.random.default_rng(3), 1500, 300, 3)
    keys = [f"f{i:05d}" for i in range(len(h))]
    ref = PHash(verbose=False).find_duplicates(
        encoding_map={k: f"{int(v):016x}" for k, v in zip(keys, h, strict=True)}, max_distance_threshold=10,
        search_method="brute_force_cython", num_dist_workers=0,
    )
    ref_pairs = {tuple(sorted((k, d))) for k, ds in ref.items() for d in ds}
    got = hamming_pairs(h, threshold=10)
    got_pairs = {tuple(sorted((keys[i], keys[j]))) for i, j in zip(got["i"], got["j"], strict=True)}
    assert got_pairs == ref_pairs and len(got_pairs) > 250


def test_data_juicer_near_pair_and_ledger_rows():
    paths = sorted(assets_path("images-data-juicer").glob("img*.jpg"))
    df = _frame(paths)
    df["nf_status"] = "ok"
    t = perceptual_duplicates(df, threshold=10)
    groups = {frozenset(g["key"]) for _, g in t.groupby("group_id")}
    assert frozenset({"img_pair_1", "img_pair_2"}) in groups
    assert frozenset({"img3", "img6", "img7"}) in groups
    df.loc[df.key == "img_pair_2", "nf_status"] = "filtered"
    t2 = perceptual_duplicates(df, threshold=10)
    assert "img_pair_1" not in set(t2["key"])
