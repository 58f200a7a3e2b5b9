"""The pipeline config: YAML → typed dataclasses, and errors that name the key, the value and the fix."""

from __future__ import annotations

import pytest

from nemo_frames.config import (
    ConfigError,
    FilterSpec,
    PipelineConfig,
    config_from_dict,
    load_config,
    parse_override,
)

BASE = {"input": {"urls": "data/{00000..00002}.tar"}}


def cfg(**kw):
    return config_from_dict({**BASE, **kw})


def test_defaults_and_sections():
    c = cfg()
    assert isinstance(c, PipelineConfig)
    assert c.score.clip is not None and c.score.clip.model == "ViT-L-14"
    assert c.dedup.exact and c.dedup.perceptual is None and c.export.samples_per_shard == 1000


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"score\.batchsize: unknown key .*did you mean 'batch_size'"):
        cfg(score={"batchsize": 8})
    with pytest.raises(ConfigError, match=r"unknown key 'fitlers'.*did you mean 'filters'"):
        cfg(fitlers=[])


def test_wrong_type_names_expected_and_found():
    with pytest.raises(ConfigError, match=r"score\.batch_size: expected a whole number like 64, found 'big' \(str\)"):
        cfg(score={"batch_size": "big"})
    with pytest.raises(ConfigError, match=r"score\.blur: expected true or false, found 'yes' \(str\)"):
        cfg(score={"blur": "yes"})
    with pytest.raises(ConfigError, match=r"cluster\.kind: 'lcoal' is not one of .*did you mean 'local'"):
        cfg(cluster={"kind": "lcoal"})
    with pytest.raises(ConfigError, match=r"export: expected a mapping"):
        cfg(export=5)


def test_filter_shortcuts_long_form_and_expressions():
    c = cfg(filters=[{"aesthetic": 5}, {"nsfw": 0.5}, {"blur": 100}, {"qr": 0.05}, {"clip_score": 0.2},
                     {"min_size": 64}, {"column": "caption_len", "op": ">", "value": 3, "name": "caption"},
                     "blur_score >= 150"])
    assert [(f.column, f.op, f.value, f.label) for f in c.filters] == [
        ("aesthetic_score", ">=", 5.0, "aesthetic"),
        ("nsfw_score", "<", 0.5, "nsfw"),
        ("blur_score", ">=", 100.0, "blur"),
        ("qr_area_ratio", "<", 0.05, "qr"),
        ("clip_score", ">=", 0.2, "clip_score"),
        ("width", ">=", 64.0, "min_size"),
        ("height", ">=", 64.0, "min_size"),
        ("caption_len", ">", 3.0, "caption"),
        ("blur_score", ">=", 150.0, "blur_score"),
    ]


def test_bad_filters():
    with pytest.raises(ConfigError, match=r"filters\[0\]: unknown filter 'blurr'; did you mean 'blur'"):
        cfg(filters=[{"blurr": 100}])
    with pytest.raises(ConfigError, match=r"filters\[0\]\.op: '=>' is not one of"):
        cfg(filters=[{"column": "blur_score", "op": "=>", "value": 1}])
    with pytest.raises(ConfigError, match=r"filters\[1\]: cannot parse"):
        cfg(filters=[{"qr": 0.1}, "blur_score is big"])
    with pytest.raises(ConfigError, match=r"filters\[0\]\.blur: expected a number"):
        cfg(filters=[{"blur": "high"}])


def test_optional_sections_true_false_null():
    c = cfg(dedup={"perceptual": True, "semantic": {"eps": 0.02}}, score={"clip": None})
    assert c.dedup.perceptual is not None and c.dedup.perceptual.threshold == 10
    assert c.dedup.semantic is not None and c.dedup.semantic.eps == 0.02
    assert c.score.clip is None
    assert cfg(dedup={"perceptual": False}).dedup.perceptual is None


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"input\.urls: no input given"):
        config_from_dict({})
    with pytest.raises(ConfigError, match=r"dedup\.perceptual\.threshold: must be 0\.\.64"):
        cfg(dedup={"perceptual": {"threshold": 99}})
    with pytest.raises(ConfigError, match=r"needs dedup\.score_column"):
        cfg(dedup={"policy": "max_score"})


def test_yaml_file_overrides_and_roundtrip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("input:\n  urls: [a.tar, b.tar]\nfilters:\n  - blur: 50\nexport:\n  samples_per_shard: 10\n")
    c = load_config(p, **{"export.samples_per_shard": 3, "score.qr": True})
    assert c.input.urls == ["a.tar", "b.tar"] and c.export.samples_per_shard == 3 and c.score.qr
    assert c.filters == [FilterSpec("blur_score", ">=", 50.0, "blur")]
    assert load_config(c) == c  # a config object round-trips through its dict form
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("input: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    assert parse_override("score.batch_size=16") == ("score.batch_size", 16)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("score.batch_size")


def test_demo_yaml_loads():
    from tests._demo import ROOT

    c = load_config(ROOT / "configs" / "demo.yaml")
    assert c.score.clip is not None and c.score.clip.model == "nf-tiny-vit" and c.score.clip.pretrained is None
    assert {f.label for f in c.filters} == {"blur", "qr", "min_size"}


def test_cluster_option_typo_is_a_config_error_naming_the_key(tmp_path):
    # Before: the run started a LocalCluster and ended ~16 s later in "RuntimeError: Nanny failed to start".
    with pytest.raises(ConfigError, match=r"cluster\.options\.n_wokers: unknown option 'n_wokers' for cluster "
                                          r"kind 'local' \(did you mean 'n_workers'\?\)"):
        cfg(cluster={"options": {"n_wokers": 2}})
    p = tmp_path / "c.yaml"
    p.write_text("input:\n  urls: a.tar\ncluster:\n  kind: slurm\n  options:\n    slurm:\n      wallltime: '01:00:00'\n")
    with pytest.raises(ConfigError, match=r"cluster\.options\.slurm\.wallltime: .*did you mean 'walltime'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"cluster\.options\.theads_per_worker: .*'threads_per_worker'"):
        load_config(p, **{"cluster.kind": "local", "cluster.options": {"theads_per_worker": 1}})
    # options of the classes get_client forwards to are accepted: LocalCluster, Nanny (processes only), Worker
    ok = cfg(cluster={"options": {"n_workers": 2, "lifetime": "1h", "preload_nanny": [], "silence_logs": 30}})
    assert ok.cluster.options["lifetime"] == "1h"
    with pytest.raises(ConfigError, match=r"cluster\.options\.preload_nanny: unknown option .* kind 'threads'"):
        cfg(cluster={"kind": "threads", "options": {"preload_nanny": []}})
    with pytest.raises(ConfigError, match=r"cluster\.options\.adress: .*did you mean 'address'"):
        cfg(cluster={"kind": "address", "options": {"adress": "tcp://127.0.0.1:8786"}})


def test_precision_auto_reaches_the_clip_config():
    pytest.importorskip("open_clip")
    from nemo_frames.pipeline import plan_score

    c = load_config({"input": {"urls": "a.tar"}, "score": {"precision": "auto", "clip": {"model": "nf-tiny-vit", "pretrained": None}}})
    assert plan_score(c).kwargs["clip"].precision == "auto"
    with pytest.raises(ConfigError, match="did you mean 'auto'"):
        load_config({"input": {"urls": "a.tar"}, "score": {"precision": "atuo"}})
