"""Battery item 2: a shard of real photos cut at every byte, through scan → fetch (and export).

For every cut, what the reader returns must be true: each sample it keeps is byte-identical to the
original, the samples that fit entirely before the cut are kept (the last of them may instead be errored
``shard_truncated``: the reader cannot tell whether it had more members), and the shard gets a
``shard_truncated`` row. A cut that loses anything without that row is *silent*.
"""

from __future__ import annotations

import os

import fsspec
import pytest

from nemo_frames.io.fetch import fetch_members
from nemo_frames.io.webdataset import ScanConfig, _meta, rows_to_frame, scan_shard
from nemo_frames.schema import error_code
from tests.reliability._battery import TarBuilder, record


@pytest.fixture(scope="module")
def shard(jpegs) -> tuple[bytes, dict[str, tuple[int, dict[str, bytes]]]]:
    """A 4-sample shard of small real photos; expected {key: (end offset of the sample's data, members)}."""
    import cv2
    import numpy as np

    tb = TarBuilder()
    expected = {}
    for i, name in enumerate(sorted(jpegs)[:4]):
        rgb = cv2.imdecode(np.frombuffer(jpegs[name], np.uint8), cv2.IMREAD_COLOR)
        small = cv2.imencode(".jpg", cv2.resize(rgb, (48, 32)), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        key = f"photo{i}"
        members = {"jpg": small, "txt": f"a {name}".encode(), "json": f'{{"i": {i}}}'.encode()}
        tb.add([(f"{key}.{e}", d) for e, d in members.items()])
        expected[key] = (tb.mark(), members)
    return tb.close(), expected


def check_cut(data: bytes, cut: int, expected: dict, url: str) -> dict:
    """Scan + fetch one truncated copy; classify the outcome."""
    with fsspec.open(url, "wb") as f:
        f.write(data[:cut])
    cfg = ScanConfig()
    rows = scan_shard(url, cfg, {}, None)
    df = rows_to_frame(rows, _meta(cfg, {}))
    ok = df[df["nf_status"] == "ok"]
    members, errors = fetch_members(ok)
    res = {"crash": False, "silent": False, "lost": 0, "kept": len(ok), "why": ""}
    truncated_row = any(error_code(r["nf_error"]) == "shard_truncated" and r["key"] is None for r in rows)
    for (key, m), err in zip(zip(ok["key"], members, strict=True), errors, strict=True):
        if err is not None or m != expected[key][1]:
            res["silent"], res["why"] = True, f"kept {key} with other bytes"
    fits = [k for k, (end, _) in expected.items() if end <= cut]
    by_key = {r["key"]: r for r in rows if r["key"] is not None}
    for k in fits:
        r = by_key.get(k)
        if r is None:
            res["lost"] += 1
            res["why"] = f"{k} fits before the cut and is missing"
        elif r["nf_status"] != "ok" and error_code(r["nf_error"]) != "shard_truncated":
            res["lost"] += 1
            res["why"] = f"{k} errored {r['nf_error']}"
    if cut < len(data.rstrip(b"\0")) + 1024 and not truncated_row:
        res["silent"], res["why"] = True, "no shard_truncated row"
    return res


def _cuts(n: int) -> range:
    step = 1 if os.environ.get("NF_RELIABILITY_FULL") else 11
    return range(0, n, step)


def test_every_byte_truncation_scan_and_fetch(shard):
    data, expected = shard
    # The archive proper ends at the end-of-archive marker; beyond it is tarfile's zero padding.
    end = -(-len(data.rstrip(b"\0")) // 512) * 512 + 1024
    url = "memory://nf-reliability/trunc.tar"
    results = [check_cut(data, cut, expected, url) for cut in _cuts(end)]
    silent = [(c, r["why"]) for c, r in zip(_cuts(end), results, strict=True) if r["silent"] or r["lost"]]
    record("2. truncation (scan + fetch)", kinds=1, inputs=len(results), crashes=0, silent=len(silent),
           lost=sum(r["lost"] for r in results), duplicates=0, shard_bytes=end)
    assert not silent, silent[:10]
    # The intact archive (cut at its full length) keeps everything.
    assert check_cut(data, len(data), expected, url)["kept"] == len(expected)


@pytest.mark.parametrize("n_cuts", [pytest.param(12, id="12-cuts"),
                                    pytest.param(120, id="120-cuts", marks=pytest.mark.slow)])
def test_truncated_input_through_export(shard, tmp_path, n_cuts):
    """Scan a cut shard and export it: the export holds exactly the scan's ok samples, byte-identical."""
    import numpy as np

    from nemo_frames.io.export import write_webdataset
    from nemo_frames.io.webdataset import read_webdataset

    data, expected = shard
    end = -(-len(data.rstrip(b"\0")) // 512) * 512
    rng = np.random.default_rng(2)
    cuts = sorted(rng.choice(np.arange(512, end), size=n_cuts, replace=False).tolist())
    silent = lost = 0
    for cut in cuts:
        src = tmp_path / f"cut{cut}.tar"
        src.write_bytes(data[:cut])
        df = read_webdataset(str(src)).compute(scheduler="sync")
        ok_keys = df[df["nf_status"] == "ok"]["key"].tolist()
        out = tmp_path / f"out{cut}"
        if ok_keys:
            write_webdataset(df, str(out), samples_per_shard=2, progress=False)
            back = read_webdataset(str(out)).compute(scheduler="sync")
            got_keys = back[back["nf_status"] == "ok"]["key"].tolist()
            members, _ = fetch_members(back)
            for k, m in zip(back["key"], members, strict=True):
                if m != expected[k][1]:
                    silent += 1
            silent += got_keys != ok_keys
        lost += sum(1 for k, (e, _) in expected.items() if e <= cut and k not in set(df["key"].dropna()))
        has_row = any(error_code(x) == "shard_truncated" for x in df["nf_error"])
        silent += not has_row
    record("2. truncation (scan + export)", kinds=1, inputs=len(cuts), crashes=0, silent=silent, lost=lost,
           duplicates=0)
    assert silent == 0 and lost == 0
