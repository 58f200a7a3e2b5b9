"""Locate the shared real assets (weights, embeddings) or skip the test saying why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path | None:
    """``$NEMO_FRAMES_ASSETS``, else ``<project>/../shared/assets``, else ``/work/shared/assets``."""
    env = os.environ.get("NEMO_FRAMES_ASSETS")
    for cand in ([Path(env)] if env else []) + [
        ROOT.parent / "shared" / "assets",
        Path("/work/shared/assets"),
    ]:
        if cand.is_dir():
            return cand
    return None


def assets_path(*parts: str) -> Path:
    """A path inside the shared assets, or ``pytest.skip`` with the reason."""
    base = assets_dir()
    if base is None:
        pytest.skip("shared assets not found: set NEMO_FRAMES_ASSETS or put them at ../shared/assets")
    p = base.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset missing: {p}")
    return p
