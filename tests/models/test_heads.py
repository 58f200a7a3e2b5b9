"""LAION aesthetic and NSFW heads on LAION's real weights and real CLIP embeddings."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from nemo_frames.models.heads import AestheticHead, NsfwHead, WeightsError
from tests._assets import assets_path

NSFW = {
    "l14": ("clip_autokeras_binary_nsfw_vit_l14", "clip_autokeras_binary_nsfw_tf_reference_io.npz"),
    "b32": ("clip_autokeras_nsfw_vit_b32", "clip_autokeras_nsfw_b32_tf_reference_io.npz"),
}
V2_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"  # PROVENANCE.txt


def _ratings(model: str) -> np.ndarray:
    d = assets_path("laion-aesthetic-predictor", f"vit_{model}_embeddings")
    return np.concatenate([np.load(d / f"rating{i}.npy") for i in range(10)])


def _nsfw_paths(which: str):
    stem, ref = NSFW[which]
    conv = assets_path("laion-clip-nsfw-detector", "converted")
    return conv / f"{stem}.safetensors", conv / f"{stem}_vocab.json", conv / ref


def _torch_sequential(sd: dict, relu: bool):
    """LAION's nn.Sequential rebuilt from the state dict (dropouts are identity in eval)."""
    torch = pytest.importorskip("torch")
    idx = sorted({int(k.split(".")[1]) for k in sd})
    mods = []
    for j, i in enumerate(idx):
        w = sd[f"layers.{i}.weight"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data, lin.bias.data = w.float(), sd[f"layers.{i}.bias"].float()
        mods.append(lin)
        if relu and j < len(idx) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


# ---------------------------------------------------------------- aesthetic


def test_v2_scores_rise_with_rating_and_match_torch():
    torch = pytest.importorskip("torch")
    p = assets_path("improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth")
    head = AestheticHead.from_file(p, sha256=V2_SHA256)
    assert (head.kind, head.activation, head.dim, len(head.layers)) == ("v2-mlp", "none", 768, 5)
    emb = _ratings("l_14")
    s = head.score(emb)
    assert s.dtype == np.float32 and s.shape == (10,)
    assert np.all(np.diff(s) > 0), s
    assert s[0] == pytest.approx(1.66, abs=0.01) and s[-1] == pytest.approx(5.75, abs=0.01)
    # The folded affine map equals LAION's 5-layer forward pass.
    mlp = _torch_sequential(torch.load(p, map_location="cpu", weights_only=True), relu=False)
    rng = np.random.default_rng(0)
    extra = rng.standard_normal((64, 768)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    x = np.concatenate([emb, extra])
    with torch.inference_mode():
        ref = mlp(torch.from_numpy(x)).numpy()[:, 0]
    assert np.abs(head.score(x) - ref).max() <= 1e-5
    np.testing.assert_array_equal(head.score(torch.from_numpy(x)), head.score(x))


def test_relu_variant_is_detected_and_matches_torch():
    torch = pytest.importorskip("torch")
    p = assets_path("improved-aesthetic-predictor", "ava+logos-l14-reluMSE.pth")
    head = AestheticHead.from_file(p)
    assert head.activation == "relu"
    x = _ratings("l_14")
    mlp = _torch_sequential(torch.load(p, map_location="cpu", weights_only=True), relu=True)
    with torch.inference_mode():
        ref = mlp(torch.from_numpy(x)).numpy()[:, 0]
    assert np.abs(head.score(x) - ref).max() <= 1e-5


@pytest.mark.parametrize("model", ["l_14", "b_32"])
def test_v1_linear_scores_rise_with_rating(model):
    head = AestheticHead.from_file(assets_path("laion-aesthetic-predictor", f"sa_0_4_vit_{model}_linear.pth"))
    assert head.kind == "v1-linear"
    s = head.score(_ratings(model))
    assert np.all(np.diff(s) > 0), s


def test_v1_b16_loads():
    # LAION ships no ViT-B/16 embeddings, so only the format and the dimension are checked.
    head = AestheticHead.from_file(assets_path("laion-aesthetic-predictor", "sa_0_4_vit_b_16_linear.pth"))
    assert (head.kind, head.dim) == ("v1-linear", 512)
    assert np.isfinite(head.score(_ratings("b_32"))).all()


def test_aesthetic_wrong_dim_and_unknown_layout(tmp_path):
    from safetensors.numpy import save_file

    head = AestheticHead.from_file(assets_path("laion-aesthetic-predictor", "sa_0_4_vit_l_14_linear.pth"))
    with pytest.raises(ValueError, match=r"\(N, 768\)"):
        head.score(np.zeros((2, 512), np.float32))
    odd = tmp_path / "odd.safetensors"
    one = np.ones(1, np.float32)
    save_file(
        {
            "layers.0.weight": np.ones((1, 4), np.float32),
            "layers.0.bias": one,
            "layers.5.weight": np.ones((1, 1), np.float32),
            "layers.5.bias": one,
        },
        str(odd),
    )
    with pytest.raises(WeightsError, match="activation="):
        AestheticHead.from_file(odd)
    # (1+1+1+1) + 1 = 5, then 5 * 1 + 1 = 6
    assert AestheticHead.from_file(odd, activation="none").score(np.ones((1, 4))).tolist() == [6.0]


def test_aesthetic_sha256_mismatch_aborts():
    p = assets_path("improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        AestheticHead.from_file(p, sha256="f" * 64)


# --------------------------------------------------------------------- nsfw


@pytest.mark.parametrize("which", ["l14", "b32"])
def test_nsfw_matches_tensorflow_reference(which):
    weights, _, ref = _nsfw_paths(which)
    io = np.load(ref)
    head = NsfwHead.from_file(weights)
    assert head.categorical_lookup
    y = head.score(io["x"])
    assert y.dtype == np.float32 and y.shape == (len(io["x"]),)
    assert np.abs(y - io["y"][:, 0]).max() <= 1e-6
    # The lookup is exercised by the reference inputs: without it the scores are off.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = NsfwHead.from_file(weights, vocab=None).score(io["x"])
    assert np.abs(plain - io["y"][:, 0]).max() > 1e-3


def test_nsfw_nemo_curator_pth_layout(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    weights, vocab, ref = _nsfw_paths("l14")
    ours = load_file(str(weights))
    # NeMo Curator's NSFWModel: norm.{mean,variance} buffers, linear_1..linear_4.
    nemo = {"norm.mean": torch.from_numpy(ours["mean"]), "norm.variance": torch.from_numpy(ours["std"]) ** 2}
    for i in range(4):
        for t in ("weight", "bias"):
            nemo[f"linear_{i + 1}.{t}"] = torch.from_numpy(ours[f"linears.{i}.{t}"])
    pth = tmp_path / "clip_autokeras_binary_nsfw.pth"
    torch.save(nemo, pth)
    io = np.load(ref)
    head = NsfwHead.from_file(pth, vocab=vocab)
    assert np.abs(head.score(io["x"]) - io["y"][:, 0]).max() <= 1e-6
    # No word list beside a NeMo .pth: a warning, and NeMo Curator's (lookup-free) scores.
    with pytest.warns(UserWarning, match="categorical"):
        plain = NsfwHead.from_file(pth)
    assert not plain.categorical_lookup
    np.testing.assert_allclose(
        plain.score(io["x"]), NsfwHead.from_file(weights, vocab=None).score(io["x"]), atol=1e-6
    )


def test_nsfw_unknown_layout_and_sha256(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "x.safetensors"
    save_file({"foo": np.zeros(3, np.float32)}, str(p))
    with pytest.raises(WeightsError, match="unknown layout"):
        NsfwHead.from_file(p)
    weights, _, _ = _nsfw_paths("b32")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        NsfwHead.from_file(weights, sha256="0" * 64)


def test_heads_on_real_clip_retrieval_embeddings():
    z = np.load(assets_path("images-clip-retrieval", "reference_image_embeddings_fp16.npz"))
    emb = z["image_embs"]
    assert emb.dtype == np.float16 and emb.shape[1] == 512
    weights, _, _ = _nsfw_paths("b32")
    nsfw = NsfwHead.from_file(weights).score(emb)
    aes = AestheticHead.from_file(
        assets_path("laion-aesthetic-predictor", "sa_0_4_vit_b_32_linear.pth")
    ).score(emb.astype(np.float32))
    assert np.isfinite(nsfw).all() and ((nsfw >= 0) & (nsfw <= 1)).all()
    assert np.isfinite(aes).all() and ((aes > -3) & (aes < 13)).all()
    # Ordinary photos: none should look NSFW.
    assert nsfw.max() < 0.5, dict(zip(z["names"].tolist(), nsfw.tolist(), strict=True))


def test_heads_do_not_import_torch_for_safetensors():
    weights, _, ref = _nsfw_paths("b32")
    code = (
        "import sys, numpy as np\n"
        "from nemo_frames.models.heads import NsfwHead\n"
        f"h = NsfwHead.from_file({str(weights)!r})\n"
        f"h.score(np.load({str(ref)!r})['x'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
