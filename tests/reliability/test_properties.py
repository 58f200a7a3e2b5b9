"""Battery item 4: hypothesis properties of the tar reader, the scan and the interleaved JSON parser.

Property: no input makes them crash (only the documented exceptions / error rows), and no well-formed
sample before a damaged region is lost or altered silently.
"""

from __future__ import annotations

import io
import json
import os

import fsspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemo_frames.io.tar import NotATar, TarCorrupt, TarTruncated, iter_members
from nemo_frames.io.webdataset import ScanConfig, scan_shard
from nemo_frames.schema import error_code
from tests.reliability._battery import TarBuilder, record

EXAMPLES = 300 if os.environ.get("NF_RELIABILITY_FULL") else 80
_stats = {"examples": 0, "crashes": 0, "silent": 0}

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/.\0"), min_size=1, max_size=40)
sample = st.tuples(names, st.lists(st.sampled_from(["jpg", "txt", "json", "cls", "seg.png"]), min_size=1,
                                   max_size=3, unique=True), st.binary(max_size=1500))
mutation = st.one_of(
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=2048)),
    st.tuples(st.just("zeros"), st.integers(1, 3)),
)


def _build(samples):
    tb = TarBuilder()
    ends, seen, keys = [], set(), []
    for i, (key, exts, data) in enumerate(samples):
        key = f"{i}_{key}"  # unique, well-formed keys
        tb.add([(f"{key}.{e}", data + e.encode()) for e in exts])
        ends.append(tb.mark())
        keys.append((key, {e: data + e.encode() for e in exts}))
        seen.add(key)
    return tb.close(), ends, keys


def _mutate(data: bytes, start: int, m) -> bytes:
    tail = data[start:]
    end_of_data = -(-len(data.rstrip(b"\0")) // 512) * 512 - start
    if m[0] == "cut":
        return data[: start + int(m[1] * max(end_of_data, 0))]
    if m[0] == "flip":
        if end_of_data <= 0:
            return data
        pos = start + int(m[1] * (end_of_data - 1))
        b = bytearray(data)
        b[pos] ^= 1 << m[2]
        return bytes(b)
    if m[0] == "garbage":
        return data[:start] + m[1] + tail
    return data[:start] + b"\0" * (512 * m[1]) + b"\1" * 512 + tail


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sample, min_size=1, max_size=5), st.integers(0, 5), mutation)
def test_damage_after_the_last_intact_sample_never_loses_it_silently(samples, n_intact, m):
    data, ends, keys = _build(samples)
    n_intact = min(n_intact, len(samples))
    start = ends[n_intact - 1] if n_intact else 0
    bad = _mutate(data, start, m)
    _stats["examples"] += 1
    # iter_members: only the documented exceptions, and every member before the damage comes out intact.
    got = {}
    try:
        for mem in iter_members(io.BytesIO(bad), want=lambda n, s: True):
            got[mem.name] = mem.data
        ended_cleanly = True
    except (TarTruncated, TarCorrupt, NotATar):
        ended_cleanly = False
    except Exception:
        _stats["crashes"] += 1
        raise
    for key, members in keys[:n_intact]:
        for e, d in members.items():
            assert got.get(f"{key}.{e}") == d, f"member {key}.{e} before the damage lost or altered"
    # scan_shard: the intact samples are ok (the last may be errored shard_truncated/_unreadable, with a code),
    # and if the reader saw damage there is a shard-level row naming it.
    url = "memory://nf-prop/shard.tar"
    with fsspec.open(url, "wb") as f:
        f.write(bad)
    rows = scan_shard(url, ScanConfig(image_extensions=("jpg", "png")), {}, None)
    by_key = {}
    for r in rows:
        if r["key"] is not None:
            by_key.setdefault(r["key"], r)
    for key, _ in keys[: max(n_intact - 1, 0)]:
        r = by_key.get(key)
        ok = r is not None and (r["nf_status"] == "ok" or error_code(r["nf_error"]) not in (None, "shard_truncated", "shard_unreadable"))
        if not ok:
            _stats["silent"] += 1
        assert ok, (key, r)
    if not ended_cleanly:
        codes = {error_code(r["nf_error"]) for r in rows if r["key"] is None}
        if not codes & {"shard_truncated", "shard_unreadable", "not_a_tar"}:
            _stats["silent"] += 1
        assert codes & {"shard_truncated", "shard_unreadable", "not_a_tar"}, rows


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
doc = st.one_of(
    st.fixed_dictionaries({"sample_id": st.text(min_size=1, max_size=10), "texts": json_values, "images": json_values}),
    json_values,
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(doc, st.binary(max_size=64), st.booleans())
def test_interleaved_json_parser_records_or_reads_never_crashes(tmp_path, d, junk, raw):
    from nemo_frames.interleaved.reader import InterleavedReadConfig, read_shard

    payload = junk if raw else json.dumps(d, allow_nan=True).encode()
    tb = TarBuilder()
    tb.add([("good.json", json.dumps({"sample_id": "good", "texts": ["a", "b"], "images": [None, None]}).encode())])
    tb.add([("x.json", payload)])
    url = "memory://nf-prop/inter.tar"
    with fsspec.open(url, "wb") as f:
        f.write(tb.close())
    _stats["examples"] += 1
    try:
        rows = read_shard(url, InterleavedReadConfig(), {}, {}, None)
    except Exception:
        _stats["crashes"] += 1
        raise
    good = [r for r in rows if r["sample_id"] == "good"]
    assert [r["nf_status"] for r in good] == ["ok"] * 3
    assert all(r["nf_status"] in ("ok", "error") for r in rows)
    assert all(error_code(r["nf_error"]) for r in rows if r["nf_status"] == "error")


def test_zz_record_property_figures():
    record("4. property tests (hypothesis: tar reader, scan, interleaved JSON)", kinds=6,
           inputs=_stats["examples"], crashes=_stats["crashes"], silent=_stats["silent"], lost=_stats["silent"],
           duplicates=0)
    assert _stats["crashes"] == 0 and _stats["silent"] == 0
