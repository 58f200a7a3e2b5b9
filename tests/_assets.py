"""Where the shared real assets are (see tests/conftest.py); tests skip with a reason when absent."""

from tests.conftest import ROOT, assets_dir, assets_path

__all__ = ["ROOT", "assets_dir", "assets_path"]
