"""Battery item 1: corrupt inputs of many kinds, each between good samples, through scan → fetch → score.

Pass criterion (DESIGN §7): 0 crashes, every bad input recorded with an error code, 0 good samples lost
(kept byte-identical, or — only next to a broken tar header — errored with a code), 0 duplicates.
"""

from __future__ import annotations

import io
import json
import os
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_frames.images.metrics import content_hash
from nemo_frames.io.webdataset import read_webdataset
from nemo_frames.schema import error_code
from nemo_frames.scoring import score
from tests.reliability._battery import Member, TarBuilder, record
from tests.reliability.corpus import KINDS, Ctx, encoded

# The battery script (scripts/reliability_battery.py) sets NF_RELIABILITY_FULL=1 for 10 cases of each kind.
CASES_PER_KIND = 10 if os.environ.get("NF_RELIABILITY_FULL") else 6
MAX_SIDECAR = 64 << 10


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    import cv2
    import skimage.data as d

    rgb = cv2.resize(d.chelsea(), (200, 130), interpolation=cv2.INTER_AREA)
    return {"jpeg": encoded(rgb, "JPEG", quality=90), "png": encoded(rgb, "PNG"), "webp": encoded(rgb, "WEBP", quality=80)}


def _good(key: str, jpeg: bytes) -> list[Member]:
    return [Member(f"{key}.jpg", jpeg), Member(f"{key}.txt", f"good {key}".encode()),
            Member(f"{key}.json", json.dumps({"id": key, "w": 1}).encode())]


def _goods(jpegs: dict[str, bytes]) -> list[bytes]:
    return [jpegs[k] for k in sorted(jpegs)]


def run_case(kind: str, i: int, tmp: Path, images: dict[str, bytes], goods: list[bytes]) -> dict:
    """Build, read and score one case; classify what happened to the bad and the good samples."""
    rng = np.random.default_rng([7, list(KINDS).index(kind), i])
    base = f"c{list(KINDS).index(kind):02d}x{i:02d}"
    keys = [f"{base}_a", f"{base}_b", f"{base}_x", f"{base}_c", f"{base}_d"]
    photos = {k: goods[(j + i) % len(goods)] for j, k in enumerate(keys) if not k.endswith("_x")}
    ctx = Ctx(key=keys[2], jpeg=images["jpeg"], png=images["png"], webp=images["webp"], good_key=keys[0],
              max_sidecar_size=MAX_SIDECAR)
    bad = KINDS[kind](rng, ctx)
    tb = TarBuilder()
    tb.add(_good(keys[0], photos[keys[0]]) + _good(keys[1], photos[keys[1]]))
    off = tb.add(bad.members)
    tb.add(_good(keys[3], photos[keys[3]]) + _good(keys[4], photos[keys[4]]))
    data = tb.close()
    if bad.mutate is not None:
        data = bad.mutate(data, off)
    path = tmp / f"{base}.tar"
    path.write_bytes(data)
    out = {"kind": kind, "case": i, "crash": None, "recorded": False, "lost": [], "dups": 0, "conservative": 0,
           "lost_recorded": 0, "good": 4}
    try:
        df = read_webdataset(str(path), max_sidecar_size=MAX_SIDECAR).compute(scheduler="sync")
        df = score(df, blur=True, phash=True, content_hash=True)
    except Exception:
        out["crash"] = traceback.format_exc(limit=6)
        return out
    codes = [error_code(e) for e in df["nf_error"]]
    df = df.assign(_code=codes)
    shard_rows = df[df["key"].isna()]
    shard_codes = set(shard_rows["_code"])
    ok = df[df["nf_status"] == "ok"]
    out["dups"] = int(ok["key"].duplicated().sum())
    # The bad input: its own row (by key; unsafe names contain the key), the duplicate, or a shard-level row.
    if kind.startswith("sample: duplicate"):
        mine = df[(df["key"] == keys[0])].iloc[1:]
    else:
        mine = df[df["key"].fillna("").str.contains(keys[2], regex=False)]
    found = set(mine["_code"]) | (shard_codes if bad.level == "shard" else set())
    if bad.level == "shard":
        # The bad sample itself may be intact (the damage is after it): then it is kept, like a good one.
        out["recorded"] = bool(shard_codes & bad.codes)
    else:
        out["recorded"] = bool(found & bad.codes) and not (mine["nf_status"] == "ok").any()
    out["found"] = sorted(c for c in found if c)
    for _j, k in enumerate(k for k in keys if not k.endswith("_x")):
        rows = df[df["key"] == k].iloc[:1]
        kept = (len(rows) == 1 and rows["nf_status"].iloc[0] == "ok"
                and rows["content_hash"].iloc[0] == content_hash(photos[k])
                and rows["caption"].iloc[0] == f"good {k}")
        if kept:
            continue
        if bad.level == "shard" and len(rows) and rows["_code"].iloc[0] in ("shard_truncated", "shard_unreadable"):
            out["conservative"] += 1  # the last sample before a broken header or cut: errored, with a code
        elif bad.level == "shard" and shard_codes & bad.codes and not len(rows):
            out["lost_recorded"] += 1  # after a broken header: named lost by the shard-level row
        else:
            out["lost"].append(k)
    return out


def run_interleaved_case(i: int, tmp: Path, images: dict[str, bytes]) -> dict:
    """A bad MINT-1T-style document JSON between two good documents."""
    from nemo_frames.interleaved.reader import read_interleaved_webdataset

    rng = np.random.default_rng([11, i])
    v = i % 8
    good_doc = lambda sid, img: json.dumps({"sample_id": sid, "texts": [None, f"text of {sid}"], "images": [img, None]})  # noqa: E731
    bad_docs = [
        b'{"sample_id": "bad", "texts": [', b'[' * 100_000 + b']' * 100_000,
        b'{"sample_id": "bad", "texts": ["a", NaN], "images": [null, null]}',
        b'{"sample_id": "bad", "texts": "not a list", "images": []}',
        b'{"sample_id": "bad", "texts": ["a", "b"], "images": [null]}',
        b'{"sample_id": "bad", "texts": ["\xff\xfe"], "images": [null]}',
        b'{"sample_id": "bad", "texts": [42, null], "images": [null, null], "n": 1e999}',
        b'{"sample_id": "bad", "texts": [' + b"9" * 20000 + b"]}",
    ]
    tb = TarBuilder()
    tb.add([Member("g1.0.jpg", images["jpeg"]), Member("g1.json", good_doc("g1", "g1.0.jpg").encode())])
    tb.add([Member("bad.json", bad_docs[v] if rng.random() < 2 else b"")])
    tb.add([Member("g2.0.png", images["png"]), Member("g2.json", good_doc("g2", "g2.0.png").encode())])
    path = tmp / f"inter{i:02d}.tar"
    path.write_bytes(tb.close())
    out = {"kind": "interleaved: bad document JSON", "case": i, "crash": None, "recorded": False, "lost": [],
           "dups": 0, "conservative": 0, "lost_recorded": 0, "good": 2}
    try:
        df = read_interleaved_webdataset(str(path), materialize=True).compute(scheduler="sync")
    except Exception:
        out["crash"] = traceback.format_exc(limit=6)
        return out
    bad = df[df["sample_id"].fillna("bad") == "bad"]
    out["recorded"] = bool(len(bad)) and (bad["nf_status"] == "error").any() and bool(
        {error_code(e) for e in bad["nf_error"]} & {"sidecar_invalid", "caption_invalid"})
    for sid, img in (("g1", images["jpeg"]), ("g2", images["png"])):
        rows = df[df["sample_id"] == sid]
        ok = (rows["nf_status"] == "ok").all() and len(rows) == 3 and (
            rows["binary_content"].dropna().tolist() == [img])
        if not ok:
            out["lost"].append(sid)
    return out


def run_parquet_case(i: int, tmp: Path, good: pd.DataFrame) -> dict:
    """A corrupt or mis-typed Parquet file beside good ones: read_parquet must fail loudly, naming it."""
    from nemo_frames.io.parquet import read_parquet

    rng = np.random.default_rng([13, i])
    d = tmp / f"pq{i:02d}"
    d.mkdir()
    for j in range(2):
        good.to_parquet(d / f"part.{j}.parquet", index=False)
    buf = io.BytesIO()
    good.to_parquet(buf, index=False)
    raw = buf.getvalue()
    v = i % 5
    if v == 0:  # footer length / magic damaged
        raw = raw[:-8] + bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    elif v == 1:  # truncated
        raw = raw[: int(len(raw) * rng.uniform(0.1, 0.99))]
    elif v == 2:  # bit flip inside the footer metadata
        pos = len(raw) - 8 - int(rng.integers(1, 200))
        b = bytearray(raw)
        b[pos] ^= 1 << int(rng.integers(8))
        raw = bytes(b)
    elif v == 3:  # wrong type of a column
        bad = good.assign(key=np.arange(len(good)))
        raw = _pq_bytes(bad)
    else:  # a required column missing
        raw = _pq_bytes(good.drop(columns=["nf_status"]))
    (d / "part.9.parquet").write_bytes(raw)
    out = {"kind": "parquet: corrupt footer / wrong schema", "case": i, "crash": None, "recorded": False,
           "lost": [], "dups": 0, "conservative": 0, "lost_recorded": 0, "good": 0}
    try:
        res = read_parquet(str(d)).compute(scheduler="sync")
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        out["recorded"] = "part.9.parquet" in msg
        out["found"] = [msg[:300]]
        if not out["recorded"]:
            out["crash"] = "unclear error (does not name the file): " + msg[:500]
        return out
    # Read without an error: acceptable only if nothing is wrong with what came back (a benign flip).
    same = list(res.columns) == list(good.columns) and all(
        res[c].tolist() == good[c].tolist() * 3 for c in good.columns)
    out["recorded"] = v == 2 and same  # a flip in unused footer metadata: nothing was damaged
    out["benign"] = out["recorded"]
    out["found"] = ["read without error"]
    return out


def _pq_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


def summarise(results: list[dict]) -> dict:
    by_kind: dict[str, int] = {}
    for r in results:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + 1
    return {
        "kinds": len(by_kind),
        "inputs": len(results),
        "crashes": sum(r["crash"] is not None for r in results),
        "recorded": sum(r["recorded"] for r in results),
        "silent": sum(r["crash"] is None and not r["recorded"] for r in results),
        "good_inputs": sum(r["good"] for r in results),
        "lost": sum(len(r["lost"]) for r in results),
        "lost_recorded": sum(r["lost_recorded"] for r in results),
        "conservative": sum(r["conservative"] for r in results),
        "duplicates": sum(r["dups"] for r in results),
    }


def _fail_report(results: list[dict]) -> str:
    bad = [r for r in results if r["crash"] or not r["recorded"] or r["lost"] or r["dups"]]
    lines = []
    for r in bad[:12]:
        lines.append(f"{r['kind']} #{r['case']}: recorded={r['recorded']} found={r.get('found')} lost={r['lost']} "
                     f"dups={r['dups']}\n{r['crash'] or ''}")
    return f"{len(bad)} failing cases:\n" + "\n".join(lines)


def test_corrupt_input_corpus(tmp_path, images, jpegs):
    goods = _goods(jpegs)
    results = [run_case(kind, i, tmp_path, images, goods) for kind in KINDS for i in range(CASES_PER_KIND)]
    results += [run_interleaved_case(i, tmp_path, images) for i in range(CASES_PER_KIND)]
    good_pq = pd.DataFrame({"key": [f"k{i}" for i in range(5)], "nf_status": ["ok"] * 5, "width": np.arange(5)})
    results += [run_parquet_case(i, tmp_path, good_pq) for i in range(CASES_PER_KIND)]
    s = summarise(results)
    record("1. corrupt inputs", **s)
    assert s["kinds"] >= 12 and s["inputs"] >= 120
    assert s["crashes"] == 0 and s["silent"] == 0 and s["lost"] == 0 and s["duplicates"] == 0, _fail_report(results)
