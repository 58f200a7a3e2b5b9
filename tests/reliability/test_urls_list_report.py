"""Issue 16 item 8: ``input.urls`` as a YAML list (a documented form) with the report on, end to end.

It used to end after export in ``The truth value of an array … is ambiguous`` (the report's header escaped
the list with ``pd.isna``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_frames.pipeline import curate


@pytest.mark.timeout(180)
def test_yaml_list_of_urls_with_report(make_shards, tmp_path: Path):
    d, expected = make_shards(n_shards=2, per_shard=3)
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        "input:\n"
        "  urls:\n"
        f"    - {d / '00000.tar'}\n"
        f"    - {d / '00001.tar'}\n"
        f"output: {out}\n"
        "cluster:\n  kind: threads\n  options: {n_workers: 1}\n"
        "score:\n  clip: null\n  blur: true\n"
        "dedup:\n  exact: false\n"
        "report:\n  enabled: true\n  per_grid: 4\n"
    )
    result = curate(str(config), progress=False)
    assert result.summary["samples_in"] == len(expected) and result.summary["kept"] == len(expected)
    assert json.loads((out / "summary.json").read_text())["config"]["input"]["urls"] == [
        str(d / "00000.tar"),
        str(d / "00001.tar"),
    ]
    page = Path(result.report).read_text()
    # the header names both shards of the list
    assert f"{d / '00000.tar'}, {d / '00001.tar'}" in page
    assert "seconds" in result.summary and "report" in result.summary["seconds"]
