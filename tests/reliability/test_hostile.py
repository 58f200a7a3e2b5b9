"""Battery item 10: hostile input and concurrency held out of the corpus (issue 16, items 1–5, 9, 10).

Each bad sample sits between good ones in shards crafted byte by byte; ``curate`` runs end to end
(scan → score → checkpoint → filters → dedup → ledger ``table/`` → export → report). Every bad sample
must be recorded with a code and a readable message, every good one exported byte-identical, and the run
must neither crash nor hang. The run lock and the summary invalidation are checked against real second
processes. Shards are built from real photos (scikit-image); tar headers are written by hand where
``tarfile`` would refuse to write the damage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import encode
from tests.reliability._battery import ROOT, header_checksum, record

pytestmark = pytest.mark.integration

MTIME = 1_700_000_000


# --------------------------------------------------------------------------- byte-level tar crafting
def _header(name: bytes, size: int, *, type: bytes = b"0", size_field: bytes | None = None,
            extra: dict[int, bytes] | None = None) -> bytes:
    """One GNU header with a raw (possibly non-UTF-8) name, optionally a forged size field."""
    b = bytearray(512)
    b[0 : len(name)] = name
    b[100:108] = b"0000644\0"
    b[108:116] = b"0000000\0"
    b[116:124] = b"0000000\0"
    b[124:136] = size_field if size_field is not None else b"%011o\0" % size
    b[136:148] = b"%011o\0" % MTIME
    b[156:157] = type
    b[257:265] = b"ustar  \0"  # old GNU magic + version
    for off, v in (extra or {}).items():
        b[off : off + len(v)] = v
    return header_checksum(bytes(b))


def _member(name: bytes | str, data: bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return _header(raw, len(data)) + data + b"\0" * (-len(data) % 512)


def _pax(records: list[tuple[bytes, bytes]]) -> bytes:
    body = b""
    for k, v in records:
        rec = b" " + k + b"=" + v + b"\n"
        n = len(rec) + len(str(len(rec)))
        n += len(str(n)) - len(str(len(rec)))
        body += str(n).encode() + rec
    return _header(b"././@PaxHeader", len(body), type=b"x") + body + b"\0" * (-len(body) % 512)


END = b"\0" * 1024


def _negative_base256(n: int) -> bytes:
    return bytes([0xFF]) + (n & ((1 << 96) - 1)).to_bytes(12, "big")[1:]


@pytest.fixture(scope="module")
def photos_jpeg() -> list[bytes]:
    """Twelve distinct real-photo JPEGs (six photos, each also mirrored), small for speed."""
    import cv2

    from tests.conftest import photos

    out = []
    for rgb in photos().values():
        h, w = rgb.shape[:2]
        s = 160 / max(h, w)
        small = cv2.resize(rgb, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        out += [encode(small, quality=90), encode(np.ascontiguousarray(small[:, ::-1]), quality=85)]
    return out


def _good(key: str, jpeg: bytes) -> tuple[bytes, dict[str, bytes]]:
    cap = f"a photo called {key}".encode()
    return _member(f"{key}.jpg", jpeg) + _member(f"{key}.txt", cap), {"jpg": jpeg, "txt": cap}


def _curate(src: Path, out: Path, **over) -> dict:
    from nemo_frames.pipeline import curate

    cfg = {
        "input": {"urls": str(src)},
        "output": str(out),
        "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 2}},
        "score": {"clip": None},
        "filters": [],
        "dedup": {"exact": True, "perceptual": {"threshold": 2}},
        "export": {"samples_per_shard": 6, "index": True},
        "report": {"enabled": True, "per_grid": 4},
    }
    for k, v in over.items():
        cfg[k] = v
    return curate(cfg, progress=False)


def _exported(shards: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for t in sorted(shards.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def _ledger(result) -> pd.DataFrame:
    return result.table().compute().set_index("key")


# --------------------------------------------------------------------------- items 1, 2, 4, 5: one hostile run
@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, photos_jpeg):
    """Two shards: non-UTF-8 names (GNU and PAX BINARY), a lone-surrogate sidecar, upper-case
    extensions, a key equal to another key's sanitised export name, a blank white JPEG beside an
    undecodable image — each between good samples."""
    from nemo_frames.io.export import safe_key

    base = tmp_path_factory.mktemp("hostile")
    src = base / "in"
    src.mkdir()
    good: dict[str, dict[str, bytes]] = {}
    p = iter(photos_jpeg)

    def g(key: str) -> bytes:
        b, m = _good(key, next(p))
        good[key] = m
        return b

    s0 = g("g00") + g("g01")
    s0 += _member(b"caf\xe9.jpg", photos_jpeg[-1]) + _member(b"caf\xe9.txt", b"latin-1 name")  # item 1: GNU name
    s0 += g("g02")
    s0 += _pax([(b"hdrcharset", b"BINARY"), (b"path", b"na\xefve.jpg")]) + _header(b"placeholder.jpg", 0)  # item 1: PAX
    s0 += _member("sur.jpg", photos_jpeg[-2]) + _member("sur.json", b'{"caption": "\\ud800 lone"}')  # item 1: surrogate
    s0 += g("g03")
    (src / "00000.tar").write_bytes(s0 + END)

    spaced = "my key"  # sanitised to my_key_<hash>; a real key of exactly that name follows (item 5)
    s1 = g("g04")
    up_jpeg, up_cap = next(p), b"upper-case extensions"
    s1 += _member("IMG_0001.JPG", up_jpeg) + _member("IMG_0001.TXT", up_cap)  # item 4
    good["IMG_0001"] = {"jpg": up_jpeg, "txt": up_cap}
    sp_jpeg = next(p)
    s1 += _member(f"{spaced}.jpg", sp_jpeg)
    s1 += g(safe_key(spaced))
    s1 += _member("white.jpg", encode(np.full((96, 96, 3), 255, np.uint8)))  # item 2: phash 2**64 - 1
    s1 += _member("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    s1 += g("g05")
    (src / "00001.tar").write_bytes(s1 + END)
    result = _curate(src / "{00000..00001}.tar", base / "out")
    return result, good, {"spaced": (spaced, sp_jpeg)}, base


def test_item1_non_utf8_names_and_lone_surrogates_recorded_good_samples_kept(hostile_run):
    result, good, _, base = hostile_run
    t = _ledger(result)
    bad = t[t.nf_status == "error"]
    # Names are stored escaped (valid UTF-8 everywhere: Parquet, JSON, errors table), with a readable message.
    assert bad.loc["caf\\xe9", "nf_error"].startswith("bad_key: member name 'caf\\\\xe9.jpg' is not valid UTF-8")
    assert bad.loc["na\\xefve", "nf_error"].startswith("bad_key: member name 'na\\\\xefve.jpg'")
    assert bad.loc["sur", "nf_error"] == (
        "sidecar_invalid: 'sur.json' is not valid JSON (JSON string holds a lone surrogate \\ud800 "
        "(not a Unicode character))"
    )
    errors = pq.read_table(base / "out" / "shards" / "_errors.parquet").to_pandas()
    assert {"caf\\xe9", "na\\xefve", "sur"} <= set(errors.key)
    json.loads((base / "out" / "summary.json").read_text())  # valid JSON, complete
    assert (base / "out" / "report.html").is_file()
    out = _exported(base / "out" / "shards")
    for key in ("g00", "g01", "g02", "g03"):
        assert out[key] == good[key]
    record("10. hostile: non-UTF-8 names, lone surrogates", kinds=3, inputs=3, crashes=0, lost=0, duplicates=0,
           silent=0, recorded=3)


def test_item2_phash_uint64_exact_end_to_end(hostile_run):
    from nemo_frames.images.decode import decode_image
    from nemo_frames.images.metrics import phash

    result, good, extra, base = hostile_run
    out = base / "out"
    t = _ledger(result)
    assert str(t.phash.dtype) == "UInt64"
    assert t.loc["white", "phash"] == 2**64 - 1  # float64 would make it 2**64 and fail the write
    assert pd.isna(t.loc["broken", "phash"]) and t.loc["broken", "nf_error"].startswith("decode_error")
    spaced, sp_jpeg = extra["spaced"]
    want = {k: int(phash(decode_image(m["jpg"]).rgb)) for k, m in {**good, spaced: {"jpg": sp_jpeg}}.items()}
    assert sum(v > 2**53 for v in want.values()) >= 5  # values float64 would round
    # What is stored in each file, read as Python ints (no pandas conversion in between).
    for where, pattern, key_col in (("scored/", "scored/*.parquet", "key"), ("table/", "table/*.parquet", "key"),
                                    ("export Parquet", "shards/[0-9]*.parquet", "orig_key")):
        stored: dict[str, int | None] = {}
        for f in sorted(out.glob(pattern)):
            tab = pq.read_table(f)
            assert tab.schema.field("phash").type == "uint64", (where, tab.schema.field("phash").type)
            stored.update(zip(tab.column(key_col).to_pylist(), tab.column("phash").to_pylist(), strict=True))
        for k, v in want.items():
            assert stored[k] == v, (where, k, stored[k], v)
        if where != "export Parquet":
            assert stored["white"] == 2**64 - 1 and stored["broken"] is None, where
    record("10. hostile: pHash > 2**53, 2**64-1 beside a null", kinds=2, inputs=2, crashes=0, lost=0,
           duplicates=0, silent=0)


def test_item4_upper_case_extensions_exported_lower_case(hostile_run):
    result, good, _, base = hostile_run
    t = _ledger(result)
    assert t.loc["IMG_0001", "nf_status"] == "ok"
    out = _exported(base / "out" / "shards")
    assert out["IMG_0001"] == good["IMG_0001"]  # members IMG_0001.jpg / .txt, bytes unchanged
    shard_pq = pd.concat(pq.read_table(f).to_pandas() for f in sorted((base / "out" / "shards").glob("[0-9]*.parquet")))
    row = shard_pq.set_index("key").loc["IMG_0001"]
    assert row.image_member == "IMG_0001.jpg" and row.orig_image_member == "IMG_0001.JPG"
    stats = json.loads((base / "out" / "shards" / "_stats.json").read_text())
    assert "unsafe_member" not in json.dumps(stats)
    record("10. hostile: upper-case extensions", kinds=1, inputs=1, crashes=0, lost=0, duplicates=0, silent=0)


def test_item5_sanitised_name_never_collides_with_a_real_key(hostile_run):
    from nemo_frames.io.export import safe_key

    result, good, extra, base = hostile_run
    spaced, sp_jpeg = extra["spaced"]
    real = safe_key(spaced)
    t = _ledger(result)
    assert t.loc[spaced, "nf_status"] == "ok" and t.loc[real, "nf_status"] == "ok"
    out = _exported(base / "out" / "shards")
    assert safe_key(real) != real and safe_key(real) != safe_key(spaced)
    assert out[safe_key(spaced)] == {"jpg": sp_jpeg}
    assert out[safe_key(real)] == good[real]
    assert "duplicate_key" not in json.dumps(json.loads((base / "out" / "shards" / "_stats.json").read_text()))
    record("10. hostile: key equal to another's sanitised name", kinds=1, inputs=1, crashes=0, lost=0,
           duplicates=0, silent=0)


def test_every_good_sample_of_the_hostile_run_exported_once(hostile_run):
    from nemo_frames.io.export import safe_key

    result, good, _, base = hostile_run
    out = _exported(base / "out" / "shards")
    for key, members in good.items():
        assert out[safe_key(key)] == members, key
    s = result.summary
    assert s["complete"] is True and s["samples_in"] == s["kept"] + s["filtered"] + s["errors"]
    assert s["written"] == len(out) == s["kept"]


# --------------------------------------------------------------------------- item 3: GNU tar's recovery
def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    v = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
    return tar if "GNU tar" in v else None


def _item3_cases(photos_jpeg) -> dict[str, tuple[bytes, str]]:
    """Shards with a damaged member ``x`` (or ``s``) between good samples: (bytes, bad key)."""
    a, ma = _good("a", photos_jpeg[0])
    b, mb = _good("b", photos_jpeg[1])
    junk = photos_jpeg[2][:1500]  # the bad member's data: JPEG bytes, no valid tar header inside
    sparse_map = {386: b"%011o\0" % 0 + b"%011o\0" % 512, 482: b"\1", 483: b"%011o\0" % 4096}
    ext_block = bytearray(512)
    ext_block[0:24] = b"%011o\0" % 1024 + b"%011o\0" % 512
    return {
        "base-256 size -1024": (a + _header(b"x.jpg", 0, size_field=_negative_base256(-1024)) + junk
                                + b"\0" * (-len(junk) % 512) + b, "x"),
        "PAX size=-1024": (a + _pax([(b"size", b"-1024")]) + _header(b"x.jpg", 0) + junk
                           + b"\0" * (-len(junk) % 512) + b, "x"),
        "PAX size=12ab": (a + _pax([(b"size", b"12ab")]) + _member("x.jpg", junk) + b, "x"),
        "old-GNU sparse with an extension block": (
            a + _header(b"s.jpg", 1024, type=b"S", extra=sparse_map) + bytes(ext_block) + b"D" * 1024 + b, "s"),
    }, {"a": ma, "b": mb}


def test_item3_bad_sizes_and_sparse_skipped_like_gnu_tar(tmp_path, photos_jpeg):
    from nemo_frames.io.fetch import fetch_members
    from nemo_frames.io.webdataset import read_webdataset

    cases, good = _item3_cases(photos_jpeg)
    tar = _gnu_tar()
    for i, (what, (body, bad_key)) in enumerate(cases.items()):
        path = tmp_path / f"{i:05d}.tar"
        path.write_bytes(body + END)
        df = read_webdataset(str(path)).compute(scheduler="sync").set_index("key")
        assert set(df.index) == {"a", bad_key, "b"}, what
        assert (df.loc[["a", "b"], "nf_status"] == "ok").all(), (what, df.nf_error.tolist())
        err = df.loc[bad_key, "nf_error"]
        assert err.startswith(("shard_unreadable: member", "unsafe_member: member 's.jpg' is a special")), (what, err)
        ok = df.loc[["a", "b"]].reset_index()
        members, errs = fetch_members(ok)
        assert errs == [None, None] and [dict(m) for m in members] == [good["a"], good["b"]], what
        if tar:  # the members GNU tar lists and extracts are the ones we keep, byte for byte
            listed = subprocess.run([tar, "-tf", str(path)], capture_output=True, text=True).stdout.split()
            assert {"a.jpg", "a.txt", "b.jpg", "b.txt"} <= set(listed), (what, listed)
            for key in ("a", "b"):
                for ext, data in good[key].items():
                    got = subprocess.run([tar, "-xOf", str(path), f"{key}.{ext}"], capture_output=True).stdout
                    assert got == data, (what, key, ext)
    # A zero block inside the skipped data ends GNU tar's listing ("A lone zero block"): b is lost there
    # too, but here it is never silent — the shard gets a shard_unreadable row saying samples after it are lost.
    a_, _ = _good("a", photos_jpeg[0])
    b_, _ = _good("b", photos_jpeg[1])
    path = tmp_path / "zero.tar"
    path.write_bytes(a_ + _header(b"x.jpg", 0, size_field=_negative_base256(-1024)) + b"\0" * 512
                     + photos_jpeg[2][:1024] + b_ + END)
    rows = read_webdataset(str(path)).compute(scheduler="sync")
    assert rows.set_index("key").loc["a", "nf_status"] == "ok"
    assert rows.nf_error.str.startswith("shard_unreadable: zero block at byte").any(), rows.nf_error.tolist()
    if tar:
        listed = subprocess.run([tar, "-tf", str(path)], capture_output=True, text=True).stdout.split()
        assert listed == ["a.jpg", "a.txt"], listed
    record("10. hostile: negative tar sizes, old-GNU sparse", kinds=len(cases) + 1, inputs=len(cases) + 1,
           crashes=0, lost=0, duplicates=0, silent=0, recorded=len(cases) + 1)


# --------------------------------------------------------------------------- items 9, 10: two runs, one directory
HOLDER = textwrap.dedent(
    """
    import sys, time
    from nemo_frames.io.commit import directory_lock
    with directory_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def _small_input(tmp_path: Path, photos_jpeg) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    body = b"".join(_good(f"k{i}", j)[0] for i, j in enumerate(photos_jpeg[:6]))
    (src / "00000.tar").write_bytes(body + END)
    return src / "00000.tar"


def test_item9_second_run_on_a_locked_directory_fails_naming_the_first(tmp_path, photos_jpeg):
    import socket

    from nemo_frames.io.commit import DirectoryLockedError

    src = _small_input(tmp_path, photos_jpeg)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, env=env,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(DirectoryLockedError) as exc:
            _curate(src, out)
        msg = str(exc.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in msg and str(out) in msg
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written, nothing swept
        # The CLI says the same and exits 3.
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps({"input": {"urls": str(src)}, "output": str(out), "score": {"clip": None},
                                   "cluster": {"kind": "threads", "options": {"n_workers": 1}}}))
        p = subprocess.run([sys.executable, "-m", "nemo_frames.cli", "curate", str(cfg)], capture_output=True,
                           text=True, env=env, timeout=120)
        assert p.returncode == 3 and f"pid {holder.pid}" in p.stderr, p.stderr[-2000:]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait()
    r = _curate(src, out)
    assert r.summary["complete"] is True and r.summary["written"] == 6
    record("10. concurrency: second run on a locked directory", kinds=1, inputs=2, crashes=0, lost=0,
           duplicates=0, silent=0)


@pytest.mark.slow
def test_item9_two_concurrent_curate_runs_one_wins_output_unchanged(tmp_path, photos_jpeg):
    """The issue's scenario: two ``curate`` processes started together on one directory."""
    src = _small_input(tmp_path, photos_jpeg)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"input": {"urls": str(src)}, "output": str(tmp_path / "out"), "score": {"clip": None},
                               "cluster": {"kind": "threads", "options": {"n_workers": 1}},
                               "export": {"samples_per_shard": 2}}))
    cmd = [sys.executable, "-m", "nemo_frames.cli", "curate", str(cfg), "--quiet"]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    res = [(p.wait(timeout=180), p.stderr.read().decode()) for p in ps]
    # Usually one run holds the lock while the other starts (exit 3, naming it); on a loaded machine the
    # first may finish before the second starts (both 0). Never may one break the other (exit 1).
    assert all(rc == 0 or (rc == 3 and "is in use by another nemo_frames run (pid" in err) for rc, err in res), res
    assert any(rc == 0 for rc, _ in res), res
    record("10. concurrency: two curate runs started together", kinds=1, inputs=2, crashes=0, lost=0,
           duplicates=0, silent=0, overlapped=sorted(rc for rc, _ in res) == [0, 3])
    out = _exported(tmp_path / "out" / "shards")
    assert sorted(out) == [f"k{i}" for i in range(6)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["complete"] is True


JOB_KILLED_IN_LEDGER = textwrap.dedent(
    """
    import os, signal, sys, json
    import nemo_frames.io.parquet as PQ
    from nemo_frames.pipeline import curate
    real = PQ.write_parquet
    def write_then_die(df, path, **kw):
        # Write a part of table/ for real, then SIGKILL this process mid-stage.
        os.makedirs(path, exist_ok=True)
        real(df.partitions[0].compute(), path, overwrite=True)
        os.kill(os.getpid(), signal.SIGKILL)
    PQ.write_parquet = write_then_die
    curate(json.loads(sys.argv[1]), progress=False)
    """
)


@pytest.mark.slow  # the default run covers it with test_curate_kills' ledger trial
def test_item10_kill_in_ledger_of_a_rerun_invalidates_the_summary(tmp_path, photos_jpeg):
    from nemo_frames.report import RunIncompleteError, write_report

    src = _small_input(tmp_path, photos_jpeg)
    out = tmp_path / "out"
    first = _curate(src, out, export={"samples_per_shard": 2})
    assert first.summary["complete"] is True
    cfg = {"input": {"urls": str(src)}, "output": str(out), "score": {"clip": None},
           "cluster": {"kind": "threads", "options": {"n_workers": 1}}, "export": {"samples_per_shard": 2},
           "dedup": {"exact": True, "perceptual": {"threshold": 2}}}
    p = subprocess.run([sys.executable, "-c", JOB_KILLED_IN_LEDGER, json.dumps(cfg)], capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=180)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["run"]["pid"] > 0
    with pytest.raises(RunIncompleteError, match="has not finished"):
        write_report(out)
    again = _curate(src, out, export={"samples_per_shard": 2})
    assert again.summary["complete"] is True and again.summary["kept"] == first.summary["kept"]
    record("10. concurrency: kill in the ledger stage of a rerun", kinds=1, inputs=1, crashes=0, lost=0,
           duplicates=0, silent=0)
