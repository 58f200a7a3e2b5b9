"""Battery item 3: the decoder against Pillow's edge cases and generated bombs, in a subprocess.

Each input is decoded under a per-file alarm in a fresh interpreter with a wall-clock limit, so a hang is a
figure, not a stuck run; the child reports its peak RSS. Every failure must be a ``DecodeError`` with a
code — anything else escaping ``decode_image`` is a crash.

Compressed tars: the reader does **not** decompress (``.tar.gz`` is recorded ``not_a_tar``): a 250 KB gzip
can hold a 256 MiB member (reliability.md §0.6), and a shard must be seekable for byte locators anyway.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from tests.conftest import assets_dir
from tests.reliability._battery import record, run_isolated
from tests.reliability.corpus import _png_chunk, gif_header, jpeg_with_size, png_header

DECODE_ALL = """
import json, signal, sys, traceback
from pathlib import Path
from nemo_frames.images.decode import decode_image, DecodeError

def alarm(*_):
    raise TimeoutError("decode took more than 10 s")

signal.signal(signal.SIGALRM, alarm)
out = {}
for p in sorted(Path(sys.argv[1]).iterdir()):
    signal.alarm(10)
    try:
        im = decode_image(p.read_bytes())
        out[p.name] = ["ok", f"{im.width}x{im.height}"]
    except DecodeError as e:
        out[p.name] = ["error", e.code.value]
    except TimeoutError as e:
        out[p.name] = ["hang", str(e)]
    except BaseException as e:
        out[p.name] = ["crash", f"{type(e).__name__}: {e}"[:300]]
    finally:
        signal.alarm(0)
print(json.dumps(out))
"""


def _bombs(jpeg: bytes) -> dict[str, bytes]:
    """Small files that claim (or decompress to) huge images or metadata."""
    out = {
        "bomb_png_60000x60000.png": png_header(60_000, 60_000),
        "bomb_png_1x2e9.png": png_header(1, 2_000_000_000),
        "bomb_jpeg_65000x65000.jpg": jpeg_with_size(jpeg, 65_000, 65_000),
        "bomb_gif_65535x65535.gif": gif_header(65_535, 65_535),
    }
    # A real zlib bomb: a 12000x12000 RGB PNG of zeros (432 MB decoded) in a few hundred KB.
    raw = zlib.compress(b"".join(b"\0" + b"\0" * 36_000 for _ in range(12_000)), 9)
    out["bomb_png_zlib_12000x12000.png"] = (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))
    # Metadata bombs in a small valid image: a zTXt chunk of 200 MB of text, a 200 MB iCCP profile.
    ztxt = b"Comment\0\0" + zlib.compress(b"A" * (200 << 20), 9)
    out["bomb_png_ztxt_200MB.png"] = png_header(8, 8, _png_chunk(b"zTXt", ztxt))
    iccp = b"icc\0\0" + zlib.compress(b"\0" * (200 << 20), 9)
    out["bomb_png_iccp_200MB.png"] = png_header(8, 8, _png_chunk(b"iCCP", iccp))
    return out


@pytest.mark.integration
def test_pillow_edge_cases_and_bombs(tmp_path, jpegs):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    base = assets_dir()
    edge = base / "images-pillow-edgecases" if base else None
    n_edge = 0
    if edge is not None and edge.is_dir():
        for p in edge.iterdir():
            if p.suffix.lower() != ".txt":
                (corpus / p.name).write_bytes(p.read_bytes())
                n_edge += 1
    bombs = _bombs(jpegs["astronaut"])
    for name, data in bombs.items():
        (corpus / name).write_bytes(data)
    res = run_isolated(DECODE_ALL, timeout=120, args=[str(corpus)])
    assert not res.hung, "the decoder corpus run hung (killed after 120 s)"
    assert res.rc == 0, res.stderr[-3000:]
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    crashes = {k: v for k, v in outcome.items() if v[0] in ("crash", "hang")}
    bombs_passed = {k for k in bombs if outcome[k][0] == "ok"}  # a bomb decoded: nothing recorded
    record("3. decoder corpus (Pillow edge cases + bombs)", kinds=len({k.rsplit(".", 1)[-1] for k in outcome}) + len(bombs),
           inputs=len(outcome), crashes=len(crashes), hangs=sum(v[0] == "hang" for v in outcome.values()),
           silent=len(bombs_passed), lost=0, duplicates=0, peak_rss_mib=round(res.peak_rss_mib or 0, 1),
           edge_cases=n_edge, bombs=len(bombs),
           errors_by_code=json.dumps(sorted({v[1] for v in outcome.values() if v[0] == "error"})))
    assert not crashes, crashes
    # Dimension bombs are refused from the header; metadata bombs are refused or decoded within memory.
    for name in ("bomb_png_60000x60000.png", "bomb_png_1x2e9.png", "bomb_jpeg_65000x65000.jpg",
                 "bomb_gif_65535x65535.gif", "bomb_png_zlib_12000x12000.png"):
        assert outcome[name] == ["error", "image_too_large"], (name, outcome[name])
    assert outcome["truncated_jpeg.jpg"][0] == "error" if n_edge else True
    assert res.peak_rss_mib is not None and res.peak_rss_mib < 512, res.peak_rss_mib


SCAN_ONE = """
import json, sys
from nemo_frames.io.webdataset import read_webdataset
df = read_webdataset(sys.argv[1]).compute(scheduler="sync")
print(json.dumps([[k, s, e] for k, s, e in zip(df.key.astype(object).where(df.key.notna(), None), df.nf_status, df.nf_error.astype(object).where(df.nf_error.notna(), None))]))
"""


def test_compressed_tars_are_read_and_bombs_stop_quickly(tmp_path, jpegs):
    """A .tar.gz is read as a shard (docs/io.md); a gzip bomb is stopped by the ratio cap, quickly, in bounded memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        ti = tarfile.TarInfo("a.jpg")
        ti.size = len(jpegs["coffee"])
        t.addfile(ti, io.BytesIO(jpegs["coffee"]))
    (tmp_path / "good.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    # A 128 MiB member of zeros in a small gzip.
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as t:
        ti = tarfile.TarInfo("big.jpg")
        ti.size = 128 << 20
        t.addfile(ti, io.BytesIO(b"\0" * ti.size))
    (tmp_path / "bomb.tar.gz").write_bytes(bomb.getvalue())
    peaks, n = [], 0
    for name, expect in (("good.tar.gz", "ok"), ("bomb.tar.gz", "decompression_bomb")):
        res = run_isolated(SCAN_ONE, timeout=60, args=[str(tmp_path / name)])
        assert not res.hung and res.rc == 0, res.stderr[-2000:]
        rows = json.loads(res.stdout.strip().splitlines()[-1])
        if expect == "ok":
            assert rows == [["a", "ok", None]], rows
        else:
            assert [r[1] for r in rows if r[2] and r[2].startswith(expect)] == ["error"], rows
        peaks.append(res.peak_rss_mib or 0)
        n += 1
    record("3. compressed tars (.tar.gz read, gzip bomb capped)", kinds=2, inputs=n, crashes=0, hangs=0, silent=0, lost=0,
           duplicates=0, peak_rss_mib=round(max(peaks), 1))
    assert max(peaks) < 400, peaks


def test_gzip_bomb_size_is_real():
    """Guard for the test above: the bomb really is small on disk and huge decompressed."""
    raw = zlib.compress(b"\0" * (64 << 20), 9)
    assert len(raw) < 100_000 and len(zlib.decompress(raw)) == 64 << 20
    assert Path(__file__).exists()
