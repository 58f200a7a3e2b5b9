"""Run directories for the explorer tests: the demo run, plus semantic dedup and an interleaved item table.

The semantic groups come from the real dedup code on real photos: each sample's embedding is its
image downscaled to 16×16 grey pixels and L2-normalised (resized and recompressed copies land near
cosine 1), written to ``dedup/`` exactly as ``curate`` writes it.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests._demo import demo_run

SWEEP = [0.001, 0.005, 0.02, 0.05, 0.1]
RUN_EPS = 0.05


def _pixel_embeddings(table: pd.DataFrame) -> pd.DataFrame:
    from PIL import Image

    from nemo_frames.backend import from_matrix
    from nemo_frames.io.fetch import read_ranges

    vecs, keys = [], []
    for r in table.itertuples(index=False):
        try:
            blob = read_ranges(r.source, [(int(r.image_offset), int(r.image_size))])[0]
            with Image.open(io.BytesIO(blob)) as im:
                v = np.asarray(im.convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
        except Exception:
            continue
        v = v - v.mean()
        vecs.append(v / (np.linalg.norm(v) or 1.0))
        keys.append(r.key)
    out = pd.DataFrame({"key": pd.Series(keys, dtype=pd.StringDtype("pyarrow")), "nf_status": "ok"})
    out["embedding"] = from_matrix(np.stack(vecs), index=out.index)
    return out


def _add_semantic(run: Path) -> None:
    import pyarrow.parquet as pq

    from nemo_frames.dedup import eps_sweep, semantic_duplicates
    from nemo_frames.io.parquet import table_from_pandas

    table = pd.concat([pd.read_parquet(p) for p in sorted((run / "table").glob("*.parquet"))], ignore_index=True)
    emb = _pixel_embeddings(table[table["nf_status"] != "error"])
    dup = semantic_duplicates(emb, eps=RUN_EPS, n_clusters=1, policy="smallest_key")
    pq.write_table(table_from_pandas(dup.reset_index(drop=True)), run / "dedup" / "semantic.parquet")
    sweep = eps_sweep(emb, SWEEP, n_clusters=1, policy="smallest_key")
    (run / "dedup" / "eps_sweep.json").write_text(json.dumps(
        {"eps": RUN_EPS, "mode": "components", "y": "fraction_removed_components", "rows": sweep.to_dict("records")},
        default=float))


def _add_items(run: Path, work: Path) -> None:
    import cv2

    from nemo_frames.interleaved import (
        blur_filter,
        read_interleaved_webdataset,
        score_items,
        write_interleaved_parquet,
    )
    from tests.conftest import write_tar
    from tests.interleaved.conftest import doc_json, jpeg, small_photos

    pics = small_photos(160)
    blurred = cv2.GaussianBlur(pics["chelsea"], (0, 0), 6)
    members = [("story.0.jpg", jpeg(pics["astronaut"])), ("story.2.jpg", jpeg(blurred)), ("story.4.jpg", jpeg(pics["coffee"]))]
    members.append(("story.json", doc_json(
        texts=[None, "An astronaut poses with a model rocket.", None, "A cat, out of focus.", None, "Coffee to finish."],
        images=["story.0.jpg", None, "story.2.jpg", None, "story.4.jpg", None], url="https://example.org/story")))
    members += [("plain.0.jpg", jpeg(pics["rocket"]))]
    members.append(("plain.json", doc_json(texts=[None, "A rocket on the pad."], images=["plain.0.jpg", None],
                                           url="https://example.org/plain")))
    (work / "mint").mkdir(parents=True)
    write_tar(work / "mint" / "00000.tar", members)
    items = read_interleaved_webdataset(str(work / "mint" / "00000.tar"))
    out = blur_filter(score_items(items, blur=True, qr=False), 100.0)
    write_interleaved_parquet(out, str(run / "items"), materialize=False, rows="all")


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory) -> Path:
    """A finished demo run (copied) with semantic dedup, an eps sweep and an item table added."""
    result, _, _ = demo_run(tmp_path_factory)
    base = tmp_path_factory.mktemp("explore")
    run = base / "run"
    shutil.copytree(result.output, run, ignore=shutil.ignore_patterns("shards", "scored"))
    _add_semantic(run)
    _add_items(run, base)
    return run


@pytest.fixture(scope="session")
def explorer(explore_run):
    from nemo_frames.explore import explore

    ex = explore(explore_run)
    yield ex
    ex.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets the `page` fixture know whether the test failed, to save a screenshot.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def page(request, tmp_path):
    """A headless-Chromium page; on failure a screenshot goes to tmp_path (and $NEMO_FRAMES_BROWSER_ARTIFACTS)."""
    import os

    from tests._browser import Page

    with Page(width=1300, height=1000) as p:
        yield p
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            shot = p.screenshot(tmp_path / f"{request.node.name}-failure.png")
            dest = os.environ.get("NEMO_FRAMES_BROWSER_ARTIFACTS")
            if dest:
                Path(dest).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(dest) / shot.name)
            print(f"screenshot of the failed page: {shot}")
