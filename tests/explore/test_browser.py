"""The explorer driven in a real headless Chromium (Debian's; skipped with the install command when absent).

Each test uses the `page` fixture, which saves a screenshot when the test fails.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("duckdb")

from nemo_frames.explore.data import Query

READY = "document.body.dataset.ready === '1'"
# Thumbnails load lazily: only those shown in the viewport are fetched, so only those are waited for.
SHOWN = ("Array.from(document.images).filter(i => i.offsetParent !== null && "
         "i.getBoundingClientRect().top < window.innerHeight && i.getBoundingClientRect().bottom > 0)")
IMAGES_DONE = f"{SHOWN}.every(i => i.complete)"


def broken_images(page) -> list[str]:
    return page.eval(f"{SHOWN}.filter(i => i.naturalWidth === 0).map(i => i.src)")


def open_app(page, explorer) -> None:
    page.goto(explorer.url)
    page.wait_for(READY)
    page.wait_for(IMAGES_DONE)


def test_page_loads_without_errors_and_shows_thumbnails(page, explorer, tmp_path):
    open_app(page, explorer)
    assert page.eval("document.querySelector('#total').textContent") == "32"
    assert page.eval("document.querySelectorAll('#grid .card img').length") == 32
    assert broken_images(page) == []
    assert page.errors() == []
    keep = os.environ.get("NEMO_FRAMES_EXPLORE_SCREENSHOT")
    if keep:  # the screenshot in docs/explore.md
        shutil.copy(page.screenshot(tmp_path / "explore.png"), keep)


def test_a_filter_changes_the_grid(page, explorer):
    open_app(page, explorer)
    page.set_value("#f-status", "filtered", "change")
    page.set_value("#f-reason", "blur", "change")
    page.wait_for("document.querySelector('#total').textContent === '3'")
    cards = page.eval("Array.from(document.querySelectorAll('#grid .card')).map(c => c.title).sort()")
    assert cards == ["chelsea-blurred", "china-blurred", "coffee-blurred"]
    page.set_value("#f-reason", "", "change")
    page.set_value("#f-text", "CAT")
    page.wait_for("document.querySelector('#total').textContent === '4'")  # chelsea and its 3 variants
    assert all(t.startswith("chelsea") for t in page.eval(
        "Array.from(document.querySelectorAll('#grid .card')).map(c => c.title)"))
    page.set_value("#f-status", "", "change")
    page.set_value("#f-text", "")
    page.set_value("#f-sort", "blur_score", "change")
    page.wait_for("document.querySelector('#grid .card .s') && "
                  "document.querySelector('#grid .card .s').textContent.startsWith('blur_score=')")
    vals = page.eval("Array.from(document.querySelectorAll('#grid .card'))"
                     ".map(c => parseFloat(c.querySelector('.s').textContent.split('=')[1]))")
    vals = [v for v in vals if v is not None]  # the errored sample has no score (shown last)
    assert vals == sorted(vals) and len(vals) >= 20
    # Two ranges at once: blur in [100, 1000] and width >= 500.
    page.set_value("#f-range-col", "blur_score", "change")
    page.set_value("#f-range-lo", 100)
    page.set_value("#f-range-hi", 1000)
    page.click("#f-range-add")
    page.set_value("#f-range-col", "width", "change")
    page.set_value("#f-range-lo", 500)
    want = explorer.data.samples(Query(ranges={"blur_score": (100, 1000), "width": (500, None)}), limit=100)
    page.wait_for(f"document.querySelector('#total').textContent === '{want['total']}'")
    assert page.eval("document.querySelectorAll('#f-ranges .chip').length") == 1
    page.click("#f-ranges button[data-drop='0']")
    page.set_value("#f-range-col", "", "change")
    page.wait_for("document.querySelector('#total').textContent === '32'")
    page.click("#grid .card")  # a sample's detail: image, every column, sidecar JSON
    page.wait_for("!document.querySelector('#detail').classList.contains('hidden') && "
                  "document.querySelector('#detail-img').complete")
    assert page.eval("document.querySelector('#detail-img').naturalWidth") > 100
    assert "caption" in page.eval("document.querySelector('#detail-sidecar').textContent")
    assert page.errors() == []


def test_a_threshold_change_updates_the_counts(page, explorer):
    open_app(page, explorer)
    page.click("nav button[data-tab=thresholds]")
    page.wait_for("document.querySelector('#t-keep').dataset.value")
    assert page.eval("document.querySelector('#t-col').value") == "blur_score"  # the run's first filter
    assert page.eval("document.querySelector('#t-keep').dataset.value") == "100"
    before = [page.eval(f"document.querySelector('{s}').textContent") for s in ("#t-keep", "#t-remove")]
    want = explorer.data.whatif("blur_score", ">=", 1000)
    page.set_value("#t-value", 1000)
    page.wait_for("document.querySelector('#t-keep').dataset.value === '1000'")
    after = [page.eval(f"document.querySelector('{s}').textContent") for s in ("#t-keep", "#t-remove")]
    assert after == [str(want["keep"]), str(want["remove"])] and after != before
    assert page.eval("document.querySelector('#t-run').textContent") == str(want["run_keep"])
    page.wait_for(IMAGES_DONE)
    shown = page.eval("Array.from(document.querySelectorAll('#t-removed .card')).map(c => c.title)")
    assert shown == [r["key"] for r in want["removed_nearest"]]
    assert broken_images(page) == []
    # The slider walks the quantiles: its middle is the median, and moving it moves the counts.
    page.set_value("#t-slider", 50)
    median = explorer.data.quantiles("blur_score")[50]
    page.wait_for(f"Math.abs(Number(document.querySelector('#t-keep').dataset.value) - {median}) < {median} * 1e-3")
    half = explorer.data.whatif("blur_score", ">=", float(page.eval("document.querySelector('#t-value').value")))
    page.wait_for(f"document.querySelector('#t-keep').textContent === '{half['keep']}'")
    page.set_value("#t-value", 1000)
    page.wait_for("document.querySelector('#t-keep').dataset.value === '1000'")
    page.click("#t-add")
    page.wait_for("document.querySelector('#t-yaml').textContent.includes('value: 1000.0')")
    assert "column: blur_score" in page.eval("document.querySelector('#t-yaml').textContent")
    assert page.errors() == []


def test_a_duplicate_group_opens(page, explorer):
    open_app(page, explorer)
    page.click("nav button[data-tab=dups]")
    page.wait_for("document.querySelectorAll('#d-columns .method').length === 3")
    methods = page.eval("Array.from(document.querySelectorAll('#d-columns .method')).map(m => m.dataset.method)")
    assert methods == ["exact", "perceptual", "semantic"]
    page.wait_for(IMAGES_DONE)
    assert broken_images(page) == []
    page.click("#d-columns .method[data-method=semantic] .group .card:not(.survivor)")
    page.wait_for("document.querySelectorAll('#detail-groups .group').length > 0")
    groups = page.eval("Array.from(document.querySelectorAll('#detail-groups .group .label')).map(e => e.textContent)")
    assert any(g.startswith("semantic duplicate group") for g in groups)
    assert page.eval("document.querySelectorAll('#detail-groups .card.survivor').length") >= 1
    sims = page.eval("Array.from(document.querySelectorAll('#detail-groups .card .s')).map(e => e.textContent)")
    assert any(s.startswith("similarity 0.9") or s.startswith("similarity 1") for s in sims)
    page.click("#detail-close")
    page.click("nav button[data-tab=sweep]")
    page.wait_for("document.querySelectorAll('#s-chart circle').length === 5")
    assert page.eval("document.querySelectorAll('#s-galleries .card').length") >= 10
    assert page.errors() == []


def test_an_interleaved_document_renders(page, explorer):
    open_app(page, explorer)
    page.click("nav button[data-tab=docs]")
    page.wait_for("document.querySelector('#doc-view').dataset.doc === 'story'")
    page.wait_for(IMAGES_DONE)
    items = page.eval("Array.from(document.querySelectorAll('#doc-view .item')).map(e => e.className.trim())")
    assert [i.split()[1] for i in items] == ["metadata", "image", "text", "image", "text", "image", "text"]
    dropped = page.eval("Array.from(document.querySelectorAll('#doc-view .item.dropped .why')).map(e => e.textContent)")
    assert len(dropped) == 1 and dropped[0].startswith("dropped: blur:")
    assert page.eval("document.querySelectorAll('#doc-view .item img').length") == 3
    assert broken_images(page) == []
    page.set_value("#doc-search", "pla")
    page.wait_for("document.querySelectorAll('#doc-list div[data-doc]').length === 1")
    page.click("#doc-list div[data-doc=plain]")
    page.wait_for("document.querySelector('#doc-view').dataset.doc === 'plain'")
    assert page.errors() == []
