"""The notebooks run top to bottom on the demo data (executed with nbclient in the venv's python3 kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel imports nemo_frames from this checkout and writes its data under tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NF_QUICKSTART_DIR", str(tmp_path / "quickstart"))
    monkeypatch.setenv("NF_INTERLEAVED_DIR", str(tmp_path / "interleaved"))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    return nb


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            data = out.get("data", {})
            text.append(out.get("text", "") + data.get("text/plain", "") + data.get("text/html", ""))
    return "\n".join(text)


@pytest.mark.integration
def test_quickstart_notebook(tmp_path, monkeypatch):
    nb = _execute("quickstart.ipynb", tmp_path, monkeypatch)
    out = _outputs(nb)
    assert "decode_error" in out and "blur: blur_score=" in out and "data:image/jpeg;base64," in out
    assert (tmp_path / "quickstart" / "export" / "00000.tar").is_file()
    assert (tmp_path / "quickstart" / "run" / "report.html").is_file()


@pytest.mark.integration
def test_interleaved_notebook(tmp_path, monkeypatch):
    nb = _execute("interleaved.ipynb", tmp_path, monkeypatch)
    out = _outputs(nb)
    assert "doc-cats" in out and "blur" in out
    assert list((tmp_path / "interleaved" / "out-wds").glob("*.tar"))
