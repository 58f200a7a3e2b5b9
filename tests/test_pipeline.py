"""The curation pipeline end to end on the demo dataset (real photos and their derived variants)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from nemo_frames.config import ConfigError
from nemo_frames.pipeline import curate
from tests._demo import demo_config, demo_run, demo_shards


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return demo_run(tmp_path_factory)


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.tar"))}


def test_every_sample_ends_in_exactly_one_state_with_the_right_reason(run):
    result, items, _ = run
    table = result.table().compute().set_index("key")
    variant = {s["key"]: s["variant"] for s in items}
    assert sorted(table.index) == sorted(variant)
    reason = table["nf_reason"].astype(object)
    by_variant: dict[str, set[str]] = {}
    for key, v in variant.items():
        status = table.at[key, "nf_status"]
        label = reason[key].split(":", 1)[0] if status == "filtered" else status
        by_variant.setdefault(v, set()).add(label)
    assert by_variant == {
        "original": {"ok"},
        "blurred": {"blur"},
        "qr": {"qr"},
        "exact": {"dedup_exact"},
        "resized": {"dedup_perceptual"},
        "recompressed": {"dedup_perceptual"},
        "cropped": {"dedup_perceptual"},
        "broken": {"error"},
    }
    assert table.at["broken", "nf_error"].startswith("decode_error")
    # A near-duplicate names the original it duplicates.
    assert "duplicate of rocket " in reason["rocket-resized"]


def test_summary_export_and_files(run):
    result, items, _ = run
    s = result.summary
    assert s == json.loads((Path(result.output) / "summary.json").read_text())
    assert (s["samples_in"], s["kept"], s["filtered"], s["errors"]) == (len(items), 10, 21, 1)
    assert s["filtered_by_reason"] == {"blur": 3, "dedup_exact": 3, "dedup_perceptual": 12, "qr": 3}
    assert s["errors_by_code"] == {"decode_error": 1}
    assert s["duplicates_removed"] == {"exact": 3, "perceptual": 12}
    assert s["written"] == 10 and s["export"]["shards"] == 2
    assert set(s["seconds"]) >= {"scan", "score", "filter", "dedup", "export", "total"}
    out = Path(result.output)
    assert len(list((out / "scored").glob("*.parquet"))) == 3
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["00000.tar", "00001.tar"]
    assert (out / "shards" / "00000.idx").is_file() and (out / "report.html").is_file()
    assert any("CLIP" in n or "clip" in n for n in s["skipped"].values())  # clip: null is recorded


def test_rerun_resumes_and_changed_filters_reuse_scores(run, tmp_path):
    result, _, data = run
    out = tmp_path / "out"
    shutil.copytree(result.output, out)
    before = _digest(out / "shards")
    again = curate(demo_config(data, out), progress=False)
    assert again.summary["score"]["resumed"] == 3 and again.summary["score"]["scored"] == 0
    assert again.export.skipped == 2 and again.export.written == 0
    assert _digest(out / "shards") == before
    assert {k: again.summary[k] for k in ("kept", "filtered_by_reason")} == {
        k: result.summary[k] for k in ("kept", "filtered_by_reason")
    }
    # New thresholds: the scores are reused, and the export refuses to mix unless told to overwrite.
    stricter = demo_config(data, out, filters=[{"blur": 500}, {"qr": 0.05}])
    with pytest.raises(ConfigError, match=r"export\.overwrite: true"):
        curate(stricter, progress=False)
    third = curate({**stricter, "export": {"samples_per_shard": 8, "overwrite": True}}, progress=False)
    assert third.summary["score"]["resumed"] == 3
    assert third.summary["filtered_by_reason"]["blur"] > result.summary["filtered_by_reason"]["blur"]
    assert third.summary["written"] == third.summary["kept"] < result.summary["kept"]


def test_unknown_filter_column_suggests_a_column(run, tmp_path):
    _, _, data = run
    bad = demo_config(data, tmp_path / "o", filters=[{"column": "blur_scor", "op": ">=", "value": 1}],
                      **{"export.enabled": False, "report.enabled": False})
    with pytest.raises(ConfigError, match=r"filters\[0\]\.column: 'blur_scor' is not a column.*did you mean 'blur_score'"):
        curate(bad, progress=False)


def test_clip_without_weights_is_skipped_with_instructions(run, tmp_path):
    pytest.importorskip("open_clip")
    _, _, data = run
    c = demo_config(
        data, tmp_path / "o",
        score={"clip": {"model": "ViT-B-32", "pretrained": str(tmp_path / "nope" / "open_clip_model.safetensors")},
               "aesthetic": str(tmp_path / "sac.pth")},
        filters=[{"blur": 100}, {"clip_score": 0.2}, {"aesthetic": 5}],
        dedup={"exact": True, "semantic": {"eps": 0.01}},
        **{"export.enabled": False, "report.enabled": False},
    )
    r = curate(c, progress=False)
    notes = "\n".join(r.summary["notes"])
    assert "CLIP stages skipped" in notes and "set score.clip.pretrained: /path/to/open_clip_model.safetensors" in notes
    assert "filter 'clip_score' (clip_score >= 0.2) skipped" in notes
    assert "aesthetic head skipped: weights file" in notes and "filter 'aesthetic'" in notes
    assert "dedup semantic skipped" in notes
    assert r.summary["filtered_by_reason"]["blur"] == 3  # the pixel operators still ran


def test_tiny_clip_random_weights_exercises_embeddings_and_semantic_dedup(tmp_path):
    pytest.importorskip("open_clip")
    data, _ = demo_shards(tmp_path)
    c = demo_config(
        data, tmp_path / "o",
        score={"clip": {"model": "nf-tiny-vit", "pretrained": None, "text": True}, "qr": False},
        filters=[{"blur": 100}],
        dedup={"exact": True, "semantic": {"eps": 0.002, "n_clusters": 2, "sweep": [0.001, 0.01, 0.1]}},
        **{"export.enabled": False},
    )
    r = curate(c, progress=False)
    assert r.summary["random_clip_weights"] is True
    assert any("RANDOM" in n for n in r.summary["notes"])
    scored = r.scored().compute()
    ok = scored[scored.nf_status == "ok"]
    assert ok.embedding.map(len).eq(64).all() and ok.clip_score.notna().all()
    sweep = json.loads((tmp_path / "o" / "dedup" / "eps_sweep.json").read_text())
    assert [row["eps"] for row in sweep["rows"]] == [0.001, 0.01, 0.1]
    assert (tmp_path / "o" / "dedup" / "semantic.parquet").is_file()
    assert "clip_score" in r.summary["score_columns"]
    # Another blur threshold, same output: other rows reach the semantic dedup. The rerun must not reuse
    # the first run's clusters; its result equals a fresh run's with the new threshold.
    stricter = {**c, "filters": [{"blur": 400}]}
    rerun = curate(stricter, progress=False)
    fresh = curate({**stricter, "output": str(tmp_path / "fresh")}, progress=False)
    assert rerun.summary["filtered_by_reason"] == fresh.summary["filtered_by_reason"]
    assert rerun.summary["filtered_by_reason"]["blur"] > r.summary["filtered_by_reason"]["blur"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o" / "dedup" / "semantic.parquet"),
                                  pd.read_parquet(tmp_path / "fresh" / "dedup" / "semantic.parquet"))
    assert len(list((tmp_path / "o" / "dedup" / "semantic_work").iterdir())) == 1  # the stale cache is gone


def test_cli_curate_exit_codes(run, tmp_path, capsys):
    import yaml

    from nemo_frames.cli import main

    _, _, data = run
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(demo_config(data, tmp_path / "o", **{"report.enabled": False})))
    assert main(["curate", str(p), "--quiet", "--set", "export.enabled=false"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kept"] == 10
    assert main(["curate", str(p), "--quiet", "--set", "score.batch_size=lots"]) == 2
    assert "score.batch_size: expected a whole number" in capsys.readouterr().err


def test_planning_a_clip_run_does_not_import_torch_in_the_driver(tmp_path):
    # The plan reads the architecture's embedding size from its JSON config; importing open_clip for it
    # cost the driver 5-8 s of start-up (the workers import torch when they score).
    pytest.importorskip("open_clip")
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from nemo_frames.pipeline import plan_score, load_config, _embed_dim\n"
        f"cfg = load_config({{'input': {{'urls': 'x/*.tar'}}, 'output': {str(tmp_path)!r}, "
        "'score': {'clip': {'model': 'nf-tiny-vit', 'pretrained': None}}})\n"
        "plan = plan_score(cfg)\n"
        "assert 'clip' in plan.kwargs, plan.notes\n"
        "print(_embed_dim('ViT-L/14'), _embed_dim('nf-tiny-vit'), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["768", "64", "False"]
