"""`import nemo_frames` stays light: no torch, no GPU library, no open_clip."""

import subprocess
import sys

HEAVY = ("torch", "open_clip", "cudf", "cupy", "cuml", "cugraph", "nvidia.dali", "dask_cuda")


def test_import_is_light():
    code = (
        "import sys, nemo_frames, nemo_frames.io.webdataset, nemo_frames.score, nemo_frames.filters;"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at import time: {out.stdout}"


def test_lazy_names_resolve():
    import nemo_frames as nf

    assert callable(nf.read_webdataset) and callable(nf.score) and callable(nf.apply_filters)
    assert nf.filters.blur(100).op == ">="
