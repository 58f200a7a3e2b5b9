"""The fused scoring pass: decode once, same embeddings as a bare open_clip loop, errors recorded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("open_clip")
pytest.importorskip("nemo_frames.images.metrics")

from nemo_frames.backend import to_matrix
from nemo_frames.filters import apply_filters, blur
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.scoring import ScoreConfig, score
from tests.conftest import assets_path, sample_members, write_tar

TINY = {"model": "nf-tiny-vit", "pretrained": None, "device": "cpu", "batch_size": 4}


@pytest.fixture
def shard(tmp_path, jpegs):
    members = []
    for i, (name, b) in enumerate(sorted(jpegs.items())):
        members += sample_members(f"k{i}", b, f"a photo of {name}")
    members += [("bad.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), ("bad.txt", b"broken")]
    return write_tar(tmp_path / "00000.tar", members)


def test_fused_pass_matches_bare_open_clip_and_records_errors(shard, monkeypatch):
    import torch

    from nemo_frames.images import decode as D
    from nemo_frames.images.preprocess import preprocess_batch
    from nemo_frames.models.clip import get_embedder
    from nemo_frames.scoring import _preprocess_params

    calls = []
    real = D.decode_image
    monkeypatch.setattr(D, "decode_image", lambda b, **kw: calls.append(1) or real(b, **kw))
    df = read_webdataset(str(shard))
    out = score(df, clip=TINY, text=True, qr=True).compute(scheduler="sync")
    ok = out[out.nf_status == "ok"]
    assert len(ok) == 6 and len(calls) == 7  # each image decoded once, the corrupt one included
    bad = out[out.key == "bad"].iloc[0]
    assert bad.nf_status == "error" and bad.nf_error.startswith("decode_error")
    assert pd.isna(bad.blur_score) and pd.isna(bad.embedding)

    emb = to_matrix(ok.embedding)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # Bare loop: same decoded pixels, same preprocessing, the model's own encode_image.
    embedder = get_embedder(**TINY)
    params = _preprocess_params(embedder)
    from nemo_frames.io.fetch import fetch_image_bytes

    imgs = [real(b, max_pixels=None) for b in fetch_image_bytes(ok).image_bytes]
    x = torch.from_numpy(preprocess_batch(imgs, params, resample=ScoreConfig().resample))
    with torch.inference_mode():
        ref = embedder.model.encode_image(x).float()
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    assert np.abs(emb - ref).max() < 1e-5
    cos = (to_matrix(ok.text_embedding) * emb).sum(1)
    assert np.allclose(cos, ok.clip_score.to_numpy(), atol=1e-5)
    assert (ok.width > 0).all() and ok.phash.notna().all() and ok.content_hash.str.len().eq(64).all()


def test_blur_filter_on_scored_table_and_worker_count_invariance(tmp_path, jpegs):
    import cv2

    from nemo_frames.cluster import get_client
    from tests.conftest import encode, photos

    members = []
    for i, (name, rgb) in enumerate(list(photos().items())[:4]):
        members += sample_members(f"sharp{i}", encode(rgb), name)
        members += sample_members(f"blurry{i}", encode(cv2.GaussianBlur(rgb, (0, 0), 6)), name)
    write_tar(tmp_path / "00000.tar", members[: len(members) // 2])
    write_tar(tmp_path / "00001.tar", members[len(members) // 2 :])
    df = read_webdataset(str(tmp_path / "*.tar"))
    scored = score(df, blur=True, phash=True)
    a = scored.compute(scheduler="sync")
    for i in range(4):
        s = a.set_index("key")
        assert s.loc[f"blurry{i}", "blur_score"] < s.loc[f"sharp{i}", "blur_score"]
    with get_client("local", n_workers=2, threads_per_worker=1, processes=False) as client:
        b = client.compute(scored).result()
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    f = apply_filters(a, [blur(100.0)])
    dropped = f[f.nf_status == "filtered"]
    assert dropped.key.str.startswith("blurry").all() and len(dropped) >= 3
    assert dropped.nf_reason.str.startswith("blur: blur_score=").all()


def test_heads_score_an_existing_embedding_column():
    """Scoring a dataset whose embeddings were computed elsewhere (clip-retrieval style)."""
    from nemo_frames.backend import from_matrix

    emb_dir = assets_path("laion-aesthetic-predictor", "vit_b_32_embeddings")
    head = assets_path("laion-aesthetic-predictor", "sa_0_4_vit_b_32_linear.pth")
    vecs = np.stack([np.load(emb_dir / f"rating{r}.npy").reshape(-1) for r in range(10)]).astype("f4")
    df = pd.DataFrame({"key": [f"rating{r}" for r in range(10)]}).assign(embedding=from_matrix(vecs))
    out = score(df, aesthetic=head, blur=False, phash=False, content_hash=False)
    assert out.nf_status.eq("ok").all()
    assert (np.diff(out.aesthetic_score.to_numpy()) > 0).all()  # rating0 < rating1 < ... < rating9


def test_chunks_and_prefetch_give_the_same_table(tmp_path, jpegs):
    # A corrupt image in the middle of a chunk, and chunks of 2 (CLIP batch): every row's scores stay
    # on that row whichever way the chunks are prepared (inline, or one ahead in a helper thread).
    members = []
    for i, (name, b) in enumerate(sorted(jpegs.items())):
        members += sample_members(f"k{i}", b, f"a photo of {name}")
        if i == 2:
            members += [("bad.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), ("bad.txt", b"broken")]
    shard = write_tar(tmp_path / "00000.tar", members)
    df = read_webdataset(str(shard)).compute()
    tiny = dict(TINY, batch_size=2)
    inline = score(df, clip=tiny, qr=True, prefetch=False)
    ahead = score(df, clip=tiny, qr=True, prefetch=True)
    pd.testing.assert_frame_equal(inline, ahead)
    assert inline.loc[inline.key == "bad", "nf_status"].item() == "error"
    assert (inline.nf_status == "ok").sum() == len(jpegs)
    # Per-row: each ok row's scores equal those of that image scored on its own.
    for _, row in inline[inline.nf_status == "ok"].iterrows():
        alone = score(df[df.key == row.key], clip=tiny, qr=True).iloc[0]
        assert alone.blur_score == row.blur_score and alone.phash == row.phash and alone.width == row.width
        assert np.allclose(np.asarray(alone.embedding), np.asarray(row.embedding), atol=1e-5)


def test_nvjpeg_decoder_path_matches_the_cpu_decoder(shard):
    # decoder="nvjpeg" on a CPU model: torchvision's decode_jpeg (libjpeg) and the torch preprocessing,
    # the same code that runs nvJPEG on a GPU. Same rows, sizes, errors and near-identical embeddings.
    df = read_webdataset(str(shard)).compute()
    # Against the CPU path's closest resample to a true bicubic (the default cv2-linear trades accuracy for speed).
    cpu = score(df, config=ScoreConfig(clip=TINY, blur=True, phash=False, resample="pil-bicubic"))
    dev = score(df, clip=TINY, blur=True, phash=False, decoder="nvjpeg")
    assert list(dev.columns) == list(cpu.columns)
    pd.testing.assert_series_equal(dev.nf_status, cpu.nf_status)
    assert dev.loc[dev.key == "bad", "nf_error"].item().startswith("decode_error")
    ok = cpu.nf_status == "ok"
    assert (dev.width[ok] == cpu.width[ok]).all() and (dev.height[ok] == cpu.height[ok]).all()
    np.testing.assert_allclose(dev.blur_score[ok], cpu.blur_score[ok], rtol=0.05)
    cos = (to_matrix(dev.embedding[ok]) * to_matrix(cpu.embedding[ok])).sum(axis=1)
    assert cos.min() > 0.999, cos
    with pytest.raises(ValueError, match="decoder"):
        ScoreConfig(decoder="gpu")


@pytest.mark.gpu
def test_nvjpeg_decoder_on_cuda(shard):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    df = read_webdataset(str(shard)).compute()
    gpu = dict(TINY, device="cuda")
    dev = score(df, clip=gpu, blur=False, phash=False, decoder="nvjpeg")
    cpu = score(df, clip=gpu, blur=False, phash=False)
    pd.testing.assert_series_equal(dev.nf_status, cpu.nf_status)
    ok = cpu.nf_status == "ok"
    assert (to_matrix(dev.embedding[ok]) * to_matrix(cpu.embedding[ok])).sum(axis=1).min() > 0.999
