"""Issue 16 item 11: a brace pattern that matches nothing fails clearly before anything is written.

It raised, but only after creating the output directory and its ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_frames.cli import main
from nemo_frames.config import ConfigError
from nemo_frames.pipeline import curate


def test_unmatched_brace_pattern_raises_before_creating_the_run(make_shards, tmp_path: Path, capsys):
    d, _ = make_shards(n_shards=2, per_shard=2)
    out = tmp_path / "run"
    cfg = {
        "input": {"urls": str(d / "{00010..00019}.tar")},  # shards 0 and 1 exist, 10..19 do not
        "output": str(out),
        "cluster": {"kind": "threads", "options": {"n_workers": 1}},
        "score": {"clip": None},
    }
    with pytest.raises(ConfigError, match=r"input\.urls: no shard matched .*00010\.tar.*\(10 in all\)"):
        curate(cfg, progress=False)
    assert not out.exists()
    # the command line says so as a config error (exit 2), and writes nothing either
    config = tmp_path / "run.yaml"
    config.write_text(f"input:\n  urls: '{d}/{{00010..00019}}.tar'\noutput: {out}\nscore:\n  clip: null\n")
    assert main(["curate", str(config)]) == 2
    assert "config error: input.urls: no shard matched" in capsys.readouterr().err
    assert not out.exists()
