"""ClipEmbedder on a tiny open_clip architecture with random weights saved to local files.

The tiny model (``nf-tiny-vit``, shipped in the package) goes through the same code as ViT-L-14:
open_clip builds it, our safe loader reads the weights, and the output is compared with a bare
open_clip loop on real photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from nemo_frames.models.clip import (  # noqa: E402
    ClipConfig,
    ClipEmbedder,
    WeightsError,
    clear_embedder_cache,
    cpu_flags,
    get_embedder,
    register_model_configs,
    resolve_precision,
    resolve_weights,
)
from nemo_frames.models.weights import sha256_file  # noqa: E402

TINY = "nf-tiny-vit"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    """Random tiny-model weights as .safetensors, as a torch .pt, and in two kinds of folders."""
    from safetensors.torch import save_file

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("tiny")
    st = d / "tiny.safetensors"
    save_file(sd, str(st))
    pt = d / "tiny.pt"
    torch.save(sd, pt)
    plain_dir = d / "plain_dir"
    plain_dir.mkdir()
    shutil.copy(st, plain_dir / "open_clip_model.safetensors")
    hf_dir = d / "hf_dir"
    hf_dir.mkdir()
    shutil.copy(pt, hf_dir / "open_clip_pytorch_model.bin")
    model_cfg = open_clip.get_model_config(TINY)
    (hf_dir / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": model_cfg,
                "preprocess_cfg": {
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.25, 0.25, 0.25],
                    "interpolation": "bilinear",
                },
            }
        )
    )
    return {"safetensors": st, "pt": pt, "plain_dir": plain_dir, "hf_dir": hf_dir}


@pytest.fixture(scope="module")
def bare(tiny_files):
    """A bare open_clip model with the same weights, and its own preprocessing and tokenizer."""
    from safetensors.torch import load_file

    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
    model.load_state_dict(load_file(str(tiny_files["safetensors"])))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(TINY)


@pytest.fixture(scope="module")
def photo_batch(bare) -> np.ndarray:
    """Real photos through open_clip's own transform: float32 (N, 3, 64, 64)."""
    import skimage.data as sd
    from PIL import Image

    _, preprocess, _ = bare
    imgs = [sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), sd.stereo_motorcycle()[0]]
    return torch.stack([preprocess(Image.fromarray(im)) for im in imgs]).numpy()


def _cfg(path: Path | str | None, **kw) -> ClipConfig:
    return ClipConfig(model=TINY, pretrained=None if path is None else str(path), device="cpu", **kw)


def _bare_embed(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        f = model.encode_image(torch.from_numpy(x))
        return torch.nn.functional.normalize(f, dim=-1).numpy()


def test_embeddings_match_bare_open_clip_and_are_unit_norm(tiny_files, bare, photo_batch):
    emb = ClipEmbedder(_cfg(tiny_files["safetensors"], batch_size=2))  # 5 images → 3 chunks
    out = emb.embed_images(photo_batch)
    ref = _bare_embed(bare[0], photo_batch)
    assert out.dtype == np.float32
    assert out.shape == (5, emb.dim) == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.abs(out - ref).max() <= 1e-5
    # Deterministic: same call, same bits; torch tensors accepted too.
    np.testing.assert_array_equal(out, emb.embed_images(photo_batch))
    np.testing.assert_array_equal(out, emb.embed_images(torch.from_numpy(photo_batch)))
    # Different photos give clearly different embeddings (the weights were really loaded and used).
    assert (out @ out.T)[~np.eye(5, dtype=bool)].max() < 0.999


def test_random_init_differs_from_loaded_weights(tiny_files, photo_batch):
    torch.manual_seed(123)
    rand = ClipEmbedder(_cfg(None)).embed_images(photo_batch)
    loaded = ClipEmbedder(_cfg(tiny_files["safetensors"])).embed_images(photo_batch)
    assert np.abs(rand - loaded).max() > 1e-2


@pytest.mark.parametrize("source", ["pt", "plain_dir"])
def test_pt_file_and_directory_load_the_same_weights(tiny_files, photo_batch, source):
    ref = ClipEmbedder(_cfg(tiny_files["safetensors"])).embed_images(photo_batch)
    emb = ClipEmbedder(_cfg(tiny_files[source]))
    assert emb.weights.kind == ("file" if source == "pt" else "dir")
    np.testing.assert_array_equal(emb.embed_images(photo_batch), ref)


def test_hf_style_directory_brings_its_own_preprocessing(tiny_files, photo_batch):
    emb = ClipEmbedder(
        ClipConfig(model="ignored-by-hf-dir", pretrained=str(tiny_files["hf_dir"]), device="cpu")
    )
    pp = emb.preprocess_params()
    assert pp.mean == (0.5, 0.5, 0.5) and pp.std == (0.25, 0.25, 0.25)
    assert pp.interpolation == "bilinear" and pp.image_size == (64, 64)
    ref = ClipEmbedder(_cfg(tiny_files["safetensors"])).embed_images(photo_batch)
    np.testing.assert_array_equal(emb.embed_images(photo_batch), ref)


def test_preprocess_params_read_from_model(tiny_files):
    pp = ClipEmbedder(_cfg(tiny_files["safetensors"])).preprocess_params()
    assert pp.image_size == (64, 64)
    assert pp.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert pp.std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert (pp.interpolation, pp.resize_mode) == ("bicubic", "shortest")


def test_text_embeddings_match_bare_open_clip(tiny_files, bare):
    texts = ["a photo of an astronaut", "a cat on a sofa", "", "coffee " * 200]  # empty and over-long
    emb = ClipEmbedder(_cfg(tiny_files["safetensors"], batch_size=3))
    out = emb.embed_texts(texts)
    model, _, tok = bare
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1).numpy()
    assert out.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.abs(out - ref).max() <= 1e-5
    assert emb.embed_texts([]).shape == (0, 64)


def test_bf16_close_to_fp32(tiny_files, photo_batch, record_property):
    fp32 = ClipEmbedder(_cfg(tiny_files["safetensors"])).embed_images(photo_batch)
    emb = ClipEmbedder(_cfg(tiny_files["safetensors"], precision="bf16"))
    assert emb.dtype == torch.bfloat16
    bf16 = emb.embed_images(photo_batch)
    assert bf16.dtype == np.float32
    cos = (fp32 * bf16).sum(axis=1)
    record_property("bf16_vs_fp32_cosine_min", float(cos.min()))
    print(f"tiny model bf16 vs fp32 cosine: min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() > 0.99
    assert np.abs(fp32 - bf16).max() > 0  # really ran in bf16


@pytest.mark.parametrize(
    ("device", "flags", "capability", "expected"),
    [
        ("cpu", {"avx2", "avx512f", "amx_bf16", "amx_tile"}, None, "bf16"),  # Sapphire Rapids
        ("cpu", {"avx2", "avx512f", "avx512_bf16"}, None, "bf16"),  # Zen 4, Cooper Lake
        ("cpu", {"avx2", "fma", "f16c"}, None, "fp32"),  # AVX2-only: bf16 emulated, ~7x slower
        ("cpu", set(), None, "fp32"),  # no /proc/cpuinfo (macOS) or unreadable
        ("cuda", None, (9, 0), "bf16"),  # H100 / H200
        ("cuda", None, (8, 6), "bf16"),  # A10, RTX 30xx
        ("cuda", None, (7, 5), "fp16"),  # T4
        ("cuda", None, (6, 1), "fp32"),  # P4
    ],
)
def test_auto_precision_follows_the_hardware(device, flags, capability, expected):
    choice = resolve_precision("auto", device, flags=flags, cuda_capability=capability)
    assert choice.precision == expected
    assert choice.reason and choice.reason != "set explicitly"
    # An explicit precision is never second-guessed.
    assert resolve_precision("fp32", device, flags=flags, cuda_capability=capability).precision == "fp32"


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_precision_is_what_the_embedder_runs(tiny_files, photo_batch, caplog):
    """On this machine: auto picks by /proc/cpuinfo, logs it, and the model really runs at that dtype."""
    flags = cpu_flags()
    expected = "bf16" if {"amx_bf16", "avx512_bf16"} & flags else "fp32"
    with caplog.at_level("INFO", logger="nemo_frames.models.clip"):
        emb = ClipEmbedder(_cfg(tiny_files["safetensors"], precision="auto"))
    assert emb.precision == expected
    assert f"precision 'auto' -> {expected} on cpu" in caplog.text
    want = {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert emb.dtype == want
    assert {p.dtype for p in emb.model.parameters()} == {want}
    assert f"precision={expected} (auto)" in repr(emb)
    # Same numbers as asking for that precision explicitly; different from the other one.
    explicit = ClipEmbedder(_cfg(tiny_files["safetensors"], precision=expected)).embed_images(photo_batch)
    other = ClipEmbedder(
        _cfg(tiny_files["safetensors"], precision="fp32" if expected == "bf16" else "bf16")
    ).embed_images(photo_batch)
    out = emb.embed_images(photo_batch)
    np.testing.assert_array_equal(out, explicit)
    assert np.abs(out - other).max() > 0


def test_fp16_refused_on_cpu(tiny_files):
    with pytest.raises(ValueError, match="fp16"):
        ClipEmbedder(_cfg(tiny_files["safetensors"], precision="fp16"))


def test_sha256_pin(tiny_files, photo_batch):
    good = sha256_file(tiny_files["safetensors"])
    ClipEmbedder(_cfg(tiny_files["safetensors"], sha256=good.upper()))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        ClipEmbedder(_cfg(tiny_files["safetensors"], sha256="0" * 64))
    with pytest.raises(ValueError, match="64 hex"):
        ClipEmbedder(_cfg(tiny_files["safetensors"], sha256="abc"))


def test_missing_tag_offline_is_a_clear_error(tmp_path):
    cfg = ClipConfig(model="ViT-B-32", pretrained="openai", device="cpu", cache_dir=str(tmp_path))
    with pytest.raises(WeightsError) as ei:
        ClipEmbedder(cfg)
    msg = str(ei.value)
    assert "HF_HUB_OFFLINE" in msg and "pretrained=" in msg and "openai" in msg
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing was fetched


def test_tag_resolves_from_hub_cache_without_network(tmp_path):
    # The hub cache layout: models--org--name/{refs/main, snapshots/<rev>/<file>}.
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"not loaded by resolve_weights")
    rw = resolve_weights(ClipConfig(model="ViT-B/32", pretrained="openai", cache_dir=str(tmp_path)))
    assert rw.kind == "tag"
    assert rw.path == snap / "open_clip_model.safetensors"
    assert rw.tag_cfg["quick_gelu"] is True  # OpenAI weights need QuickGELU


def test_bad_paths_and_tags(tmp_path):
    with pytest.raises(WeightsError, match="known tags"):
        ClipEmbedder(ClipConfig(model="ViT-B-32", pretrained="no_such_tag", device="cpu"))
    with pytest.raises(WeightsError, match="no such file"):
        ClipEmbedder(_cfg(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="no weights file"):
        ClipEmbedder(_cfg(tmp_path))  # an empty directory
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        ClipEmbedder(ClipConfig(model="No-Such-Arch", pretrained=None, device="cpu"))


class _Payload:
    """An object whose unpickling would create a file: proof that no pickle code runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_in_weights_is_refused(tmp_path, tiny_files):
    marker = tmp_path / "pwned"
    sd = torch.load(tiny_files["pt"], weights_only=True)
    sd["evil"] = _Payload(str(marker))
    bad = tmp_path / "evil.pt"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match="refusing to load"):
        ClipEmbedder(_cfg(bad))
    assert not marker.exists()


def test_mismatched_architecture_is_a_clear_error(tmp_path, tiny_files):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_files["safetensors"]))
    del sd["visual.proj"]
    p = tmp_path / "partial.safetensors"
    save_file(sd, str(p))
    with pytest.raises(WeightsError, match="missing keys"):
        ClipEmbedder(_cfg(p))


def test_input_shape_is_checked(tiny_files):
    emb = get_embedder(_cfg(tiny_files["safetensors"]))
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        emb.embed_images(np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(TypeError, match="float"):
        emb.embed_images(np.zeros((2, 3, 64, 64), np.uint8))
    assert emb.embed_images(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 64)


def test_get_embedder_caches_per_config(tiny_files):
    clear_embedder_cache()
    a = get_embedder(_cfg(tiny_files["safetensors"]))
    assert get_embedder(_cfg(tiny_files["safetensors"])) is a
    assert get_embedder(model=TINY, pretrained=str(tiny_files["safetensors"]), device="cpu") is a
    assert get_embedder(_cfg(tiny_files["safetensors"]), batch_size=8) is not a
    clear_embedder_cache()
    assert get_embedder(_cfg(tiny_files["safetensors"])) is not a


def test_threads_option_sets_torch_threads(tiny_files):
    before = torch.get_num_threads()
    try:
        ClipEmbedder(_cfg(tiny_files["safetensors"], threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_reduced_precision_on_cuda_close_to_fp32(tiny_files, photo_batch, precision):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ref = ClipEmbedder(_cfg(tiny_files["safetensors"])).embed_images(photo_batch)
    cfg = ClipConfig(model=TINY, pretrained=str(tiny_files["safetensors"]), device="cuda", precision=precision)
    emb = ClipEmbedder(cfg)
    if precision == "auto":
        major = torch.cuda.get_device_capability()[0]
        assert emb.precision == ("bf16" if major >= 8 else "fp16" if major >= 7 else "fp32")
    out = emb.embed_images(photo_batch)
    assert emb.device.type == "cuda" and out.dtype == np.float32
    assert (ref * out).sum(axis=1).min() > 0.99
