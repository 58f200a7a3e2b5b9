"""The HTML report: self-contained, charts and thumbnails present, and it renders in a real headless browser."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import pytest

from nemo_frames.report import histogram_svg, line_svg, write_report
from tests._browser import load_page
from tests._demo import demo_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return demo_run(tmp_path_factory)


def test_report_is_self_contained_with_every_section(run, tmp_path):
    result, _, _ = run
    page = Path(result.report).read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "the page must not load anything from the network"
    for title in ("Summary", "Score distributions", "What each filter dropped and kept", "Errored samples",
                  "Duplicate groups"):
        assert title in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 20 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    from PIL import Image

    for s in srcs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert max(im.size) <= 128
    # The blur filter's dropped grid holds exactly the three blurred photos.
    blur = page[page.index("blur: keeps blur_score"):page.index("qr: keeps")]
    dropped = blur[: blur.index("kept (closest")]
    assert sorted(re.findall(r'<figure class="drop" title="([^ |]+)', dropped)) == [
        "chelsea-blurred", "china-blurred", "coffee-blurred"]
    # Threshold lines drawn on the histograms of filtered columns.
    assert page.count('stroke="#d0342c"') >= 3
    # Survivors are marked in the duplicate groups.
    assert page.count('class="survivor"') >= 3 and "removed</span>" in page


def test_histogram_counts_match_values():
    svg = histogram_svg([1, 1, 1, 5, 9], kept=[True, False, True, True, True], bins=3, thresholds=[(2, ">= 2")])
    titles = re.findall(r"<title>[^:]+: (\d+)</title>", svg)
    assert sorted(map(int, titles)) == [1, 1, 1, 2]  # bin 1: 2 kept + 1 not kept; bins 2, 3: 1 kept each
    assert "no values" in histogram_svg([float("nan")])
    assert line_svg([], []).endswith("</svg>")


def test_report_renders_in_headless_chromium(run, tmp_path):
    result, _, _ = run
    shot = tmp_path / "report.png"
    page = load_page(Path(result.report), screenshot=shot)
    assert page["exceptions"] == [] and page["console_errors"] == []
    assert len(page["images"]) >= 20
    broken = [i["alt"] for i in page["images"] if not (i["complete"] and i["w"] > 0)]
    assert broken == []
    assert page["svgs"] >= 4 and page["title"].startswith("nemo_frames report")
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("NEMO_FRAMES_REPORT_SCREENSHOT")
    if keep:  # for a human to look at
        shutil.copy(shot, keep)


def test_report_command(run, tmp_path, capsys):
    from nemo_frames.cli import main

    result, _, _ = run
    out = tmp_path / "r.html"
    assert main(["report", result.output, "--out", str(out), "--per-grid", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 1000
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path)


def test_report_reads_the_table_in_bounded_pieces(run, tmp_path, monkeypatch):
    """Tiny batches and a tiny histogram sample give the same grids as one batch: the running top-k is exact."""
    import nemo_frames.report as rep

    result, _, _ = run
    whole = rep.build_report(result.output)
    monkeypatch.setattr(rep, "_BATCH_ROWS", 5)
    monkeypatch.setattr(rep, "HIST_SAMPLE_ROWS", 10)
    pieces = rep.build_report(result.output)

    def grids(page: str) -> str:
        return page[page.index("What each filter dropped"):page.index("<h2 id='dedup'>")]

    assert grids(pieces) == grids(whole)
    assert "From a uniform sample of" in pieces and "From a uniform sample of" not in whole
