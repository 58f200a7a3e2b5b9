"""Battery item 8: hostile member names, pickles in data, weights without pickle and with a sha256 pin.

* Tar members named ``../x``, ``/abs/x``, with control characters, symlinks and hard links: exporting a
  dataset read from such shards writes nothing outside the output directory (checked over a sandbox), and
  written keys are sanitised.
* ``.pkl`` / ``.pth`` members whose unpickling would create a marker file: through scan, fetch, score and
  export the marker never appears (nothing from data is unpickled), and the bytes are copied verbatim.
* Weights: a ``.pth`` head carrying a pickle payload is refused without running it; a sha256 pin
  mismatch aborts before anything is parsed (heads and a local CLIP file).
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import pytest

from nemo_frames.io.export import write_webdataset
from nemo_frames.io.fetch import fetch_members
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.scoring import score
from tests.reliability._battery import Member, TarBuilder, record


class _Payload:
    """Unpickling this calls os.mkdir(marker): proof that something unpickled data."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_names_never_write_outside_the_output(tmp_path, jpegs):
    sandbox = tmp_path / "sandbox"
    (sandbox / "in").mkdir(parents=True)
    j = jpegs["coffee"]
    tb = TarBuilder()
    tb.add([("ok1.jpg", j), ("ok1.txt", b"fine")])
    tb.add([Member("../../escape1.jpg", j), Member("../../escape1.txt", b"x")])
    tb.add([Member("/tmp/nf_abs_escape.jpg", j)])
    tb.add([Member("ctl\x1b[2J.jpg", j)])
    tb.add([Member("link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd"), Member("link.txt", b"x")])
    tb.add([Member("hard.jpg", type=tarfile.LNKTYPE, linkname="../../escape1.jpg")])
    tb.add([("dots.in.name.jpg", j), ("dir/sub/ok2.jpg", j), ("weird key ü✓.jpg", j)])
    (sandbox / "in" / "00000.tar").write_bytes(tb.close())
    before = _tree(sandbox)
    df = read_webdataset(str(sandbox / "in")).compute(scheduler="sync")
    out = sandbox / "out"
    write_webdataset(df, str(out), samples_per_shard=2, write_index=True, progress=False)
    written = _tree(sandbox) - before
    outside = [p for p in written if not p.startswith("out")]
    assert not outside, outside
    assert not Path("/tmp/nf_abs_escape.jpg").exists()
    # Every member name in the exported tars is a plain relative name (no '/', no '..', no control chars).
    names = []
    for t in out.glob("*.tar"):
        with tarfile.open(t) as tf:
            names += [m.name for m in tf.getmembers()]
            assert all(m.isreg() for m in tf.getmembers())
    bad = [n for n in names if "/" in n or ".." in n.split(".")[0] or any(ord(c) < 32 for c in n)]
    hostile = df[df["nf_error"].fillna("").str.startswith("unsafe_member")]
    record("8. security: hostile member names", kinds=5, inputs=5, crashes=0, silent=5 - len(hostile), lost=0,
           duplicates=0, written_outside=len(outside), unsafe_names_in_output=len(bad))
    assert not bad, bad
    assert len(hostile) == 5, df[["key", "nf_error"]]
    assert set(df[df["nf_status"] == "ok"]["key"]) == {"ok1", "dots", "dir/sub/ok2", "weird key ü✓"}


def test_pickles_in_data_are_never_unpickled(tmp_path, jpegs):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(str(marker)))
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"x": _Payload(str(marker))}, buf)
    pth = buf.getvalue()
    tb = TarBuilder()
    for i in range(3):
        tb.add([(f"s{i}.jpg", jpegs["rocket"]), (f"s{i}.txt", b"cap"), (f"s{i}.pkl", payload), (f"s{i}.pth", pth),
                (f"s{i}.pyd", payload)])
    src = tmp_path / "in"
    src.mkdir()
    (src / "00000.tar").write_bytes(tb.close())
    df = read_webdataset(str(src), with_bytes=False).compute(scheduler="sync")
    members, _errors = fetch_members(df)
    scored = score(df, blur=True, phash=True)
    write_webdataset(scored, str(tmp_path / "out"), samples_per_shard=2, progress=False)
    back = read_webdataset(str(tmp_path / "out")).compute(scheduler="sync")
    copied, _ = fetch_members(back)
    record("8. security: pickles in data (.pkl/.pth/.pyd through scan, fetch, score, export)", kinds=3, inputs=9,
           crashes=0, silent=int(marker.exists()), lost=3 - int((back["nf_status"] == "ok").sum()), duplicates=0,
           executed=int(marker.exists()))
    assert not marker.exists()
    assert all(m["pkl"] == payload and m["pth"] == pth for m in members)
    assert all(m["pkl"] == payload and m["pth"] == pth for m in copied)
    assert (scored["nf_status"] == "ok").all()


def test_weights_without_pickle_and_with_a_pin(tmp_path):
    import hashlib

    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from nemo_frames.models.heads import AestheticHead, NsfwHead
    from nemo_frames.models.weights import WeightsError

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil_head.pth"
    torch.save({"weight": torch.zeros(1, 8), "bias": torch.zeros(1), "x": _Payload(str(marker))}, evil)
    outcomes = {}
    with pytest.raises(Exception) as info:
        AestheticHead.from_file(evil)
    outcomes["pickle payload in .pth"] = type(info.value).__name__
    assert not marker.exists()

    good = tmp_path / "head.safetensors"
    save_file({"weight": np.ones((1, 8), "f4"), "bias": np.zeros(1, "f4")}, str(good))
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    assert AestheticHead.from_file(good, sha256=digest).dim == 8
    with pytest.raises(WeightsError, match="sha256"):
        AestheticHead.from_file(good, sha256="0" * 64)
    outcomes["aesthetic pin mismatch"] = "WeightsError"
    with pytest.raises(WeightsError, match="sha256"):
        NsfwHead.from_file(good, sha256="1" * 64)
    outcomes["nsfw pin mismatch"] = "WeightsError"

    from nemo_frames.models.clip import ClipConfig, get_embedder

    fake_clip = tmp_path / "clip.safetensors"
    save_file({"w": np.zeros(4, "f4")}, str(fake_clip))
    with pytest.raises(WeightsError, match="sha256"):
        get_embedder(ClipConfig(model="ViT-B-32", pretrained=str(fake_clip), sha256="2" * 64))
    outcomes["clip pin mismatch"] = "WeightsError"
    record("8. security: weights (pickle payload, sha256 pins)", kinds=len(outcomes), inputs=len(outcomes),
           crashes=0, silent=int(marker.exists()), lost=0, duplicates=0)
