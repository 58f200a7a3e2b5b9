"""Locate ../shared/assets for tests (skip with a clear reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]


def _candidates() -> list[Path]:
    out = []
    if os.environ.get("NEMO_FRAMES_ASSETS"):
        out.append(Path(os.environ["NEMO_FRAMES_ASSETS"]))
    out += [_ROOT / ".." / "shared" / "assets", Path("/work/shared/assets")]
    return out


def assets_path(*parts: str) -> Path:
    """Path to an asset under ``shared/assets``; ``pytest.skip`` when it is not on this machine."""
    for base in _candidates():
        p = base.joinpath(*parts)
        if p.exists():
            return p
    pytest.skip(
        f"real assets {'/'.join(parts)!r} not found (set NEMO_FRAMES_ASSETS or provide ../shared/assets)"
    )
    raise AssertionError("unreachable")
