"""The nemo-frames CLI: inspect and reshard on real shards, in-process and as a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nemo_frames import cli

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_table_and_json(make_shards, tmp_path, capsys):
    d, expected = make_shards(n_shards=2, per_shard=5)
    data = (d / "00001.tar").read_bytes()
    (d / "00002.tar").write_bytes(data[: len(data) // 2])  # a truncated shard: its error must show
    assert cli.main(["inspect", str(d / "*.tar"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "00000.tar" in out and "00002.tar" in out and "shard_truncated" in out and "jpg:" in out

    assert cli.main(["inspect", str(d / "*.tar"), "--json", "--no-progress"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by = {Path(r["source"]).name: r for r in recs}
    assert by["00000.tar"]["samples"] == by["00000.tar"]["ok"] == 5
    assert by["00000.tar"]["members"] == {"jpg": 5, "json": 5, "txt": 5}
    assert by["00000.tar"]["member_bytes"] == sum(
        len(e["jpg"]) + len(e["caption"].encode()) + len(json.dumps(e["json"]).encode())
        for k, e in expected.items() if k.startswith("s00")
    )
    assert by["00002.tar"]["error"] >= 1 and "shard_truncated" in by["00002.tar"]["errors"]


def test_reshard_with_filters_and_index(make_shards, tmp_path, capsys):
    d, expected = make_shards(n_shards=3, per_shard=6)
    out = tmp_path / "out"
    code = cli.main([
        "reshard", str(d / "*.tar"), "--out", str(out), "--samples-per-shard", "4", "--index", "--no-progress",
        "--filter", "aesthetic_hint >= 1.5", "--filter", "~caption.str.contains('rocket')",
    ])
    assert code == 0
    kept = [k for k, e in expected.items() if int(k[-4:]) + 0.5 >= 1.5 and "rocket" not in e["caption"]]
    assert f"wrote {len(kept)} samples" in capsys.readouterr().out
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["final"]["written"] == len(kept) and stats["final"]["filtered"] == len(expected) - len(kept)
    assert set(stats["input"]["filtered_by_reason"]) == {"filter"}
    shards = sorted(p.name for p in out.glob("[0-9]*.tar"))
    assert len(shards) == -(-len(kept) // 4) and all((out / s.replace(".tar", ".idx")).exists() for s in shards)
    table = pd.concat(pd.read_parquet(p) for p in sorted(out.glob("[0-9]*.parquet")))
    assert list(table["key"]) == kept

    # rerun: everything is done already
    assert cli.main(["reshard", str(d / "*.tar"), "--out", str(out), "--samples-per-shard", "4", "--index",
                     "--no-progress", "--filter", "aesthetic_hint >= 1.5",
                     "--filter", "~caption.str.contains('rocket')"]) == 0
    assert f"0 written now, {len(shards)} already done" in capsys.readouterr().out
    # another filter into the same directory is refused with the fix in the message
    assert cli.main(["reshard", str(d / "*.tar"), "--out", str(out), "--samples-per-shard", "4",
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "ConfigMismatchError" in err and "overwrite=True" in err


def test_bad_filter_is_a_clear_error(make_shards, tmp_path, capsys):
    d, _ = make_shards(n_shards=1, per_shard=2)
    code = cli.main(["reshard", str(d / "*.tar"), "--out", str(tmp_path / "o"), "--filter", "no_such_col > 1",
                     "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no_such_col" in err and "Columns:" in err and "caption" in err


def test_registry_lets_other_modules_add_subcommands(capsys):
    def args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n", type=int, default=1)

    try:
        @cli.command("hello-test", help="test subcommand", arguments=args)
        def _hello(a: argparse.Namespace) -> int:
            print("hello" * a.n)
            return 3

        assert cli.main(["hello-test", "--n", "2"]) == 3
        assert capsys.readouterr().out.strip() == "hellohello"
        with pytest.raises(ValueError, match="registered twice"):
            cli.command("hello-test", help="x", arguments=args)(_hello)
    finally:
        cli.COMMANDS.pop("hello-test", None)


@pytest.mark.integration
def test_subprocess_smoke(make_shards, tmp_path):
    d, _ = make_shards(n_shards=1, per_shard=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "nemo_frames.cli", "inspect", str(d), "--json", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["samples"] == 3
    r = subprocess.run([sys.executable, "-m", "nemo_frames.cli", "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and "inspect" in r.stdout and "reshard" in r.stdout
