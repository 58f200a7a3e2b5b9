"""write_webdataset: content, format, determinism, resume after SIGKILL, errors, S3, DALI index."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

from nemo_frames.io.commit import Committer, ConfigMismatchError
from nemo_frames.io.export import ExportError, safe_key, write_webdataset
from nemo_frames.schema import Status

from ..conftest import assets_path
from ._export_fixtures import MotoS3, make_dataset, mark_some, read_tar

ROOT = Path(__file__).resolve().parents[2]


def to_dask(frames: list[pd.DataFrame]) -> dd.DataFrame:
    return dd.from_delayed([dask.delayed(f) for f in frames], meta=frames[0].iloc[:0], verify_meta=False)


def repartition(frames: list[pd.DataFrame], sizes: list[int]) -> list[pd.DataFrame]:
    """The same rows in the same order, cut into partitions of the given sizes."""
    allrows = pd.concat(frames, ignore_index=True)
    out, at = [], 0
    for n in sizes:
        out.append(allrows.iloc[at : at + n].reset_index(drop=True))
        at += n
    assert at == len(allrows)
    return out


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output file (markers and the run-level files excluded)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.iterdir())
        if p.is_file() and p.name[0].isdigit()
    }


def output_keys(out: Path) -> list[str]:
    """Keys of every sample in the committed shards, in shard order, read from the tars."""
    c = Committer(out, stage="export-webdataset", config=json.loads((out / "_config.json").read_text())["config"])
    keys = []
    for name in sorted(c.markers()):
        seen: list[str] = []
        for member, _ in read_tar(out / f"{name}.tar"):
            k = member.split(".", 1)[0]
            if not seen or seen[-1] != k:
                seen.append(k)
        keys += seen
    return keys


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    return root, mark_some(make_dataset(root / "in", n_shards=3, per_shard=12))


def ok_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    allrows = pd.concat(frames, ignore_index=True)
    return allrows[allrows["nf_status"] == Status.OK.value].reset_index(drop=True)


# ------------------------------------------------------------------ content and format
def test_export_writes_ok_rows_in_order_with_original_bytes(dataset, tmp_path):
    _, frames = dataset
    out = tmp_path / "out"
    r = write_webdataset(to_dask(frames), str(out), samples_per_shard=5, write_index=True, progress=False)
    ok = ok_rows(frames)
    assert r.samples == len(ok) and r.shards == [f"{i:05d}" for i in range((len(ok) + 4) // 5)]
    assert output_keys(out) == [safe_key(k) for k in ok["key"]]

    src = {}  # original member bytes by (safe key, ext), read from the input tars
    for f in frames:
        for member, data in read_tar(f["source"].iloc[0]):
            head, _, base = member.rpartition("/")
            stem, ext = base.split(".", 1)
            src[(safe_key(f"{head}/{stem}" if head else stem), ext)] = data

    for name in r.shards:
        raw = (out / f"{name}.tar").read_bytes()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            infos = tf.getmembers()
        assert raw[257:265] == b"ustar  \0"  # GNU magic; no PAX headers anywhere
        assert all(not i.pax_headers and i.mtime == 946684800 and i.uid == 0 and i.gid == 0 and i.mode == 0o644
                   and i.uname == "" and i.type == tarfile.REGTYPE for i in infos)
        names = [i.name for i in infos]
        assert [n.split(".", 1)[1] for n in names] == ["jpg", "txt", "json"] * (len(names) // 3)  # source order
        for i in infos:
            k, ext = i.name.split(".", 1)
            assert raw[i.offset_data : i.offset_data + i.size] == src[(k, ext)]  # copied, never re-encoded

        pq = pd.read_parquet(out / f"{name}.parquet")
        assert list(pq["key"]) == [n.split(".")[0] for n in names[::3]]
        assert (pq["source"] == str(out / f"{name}.tar")).all()
        for _, row in pq.iterrows():
            assert raw[row.image_offset : row.image_offset + row.image_size] == src[(row.key, "jpg")]
            for ext, (off, size) in json.loads(row.nf_members).items():
                assert raw[off : off + size] == src[(row.key, ext)]
            orig = ok.set_index("key").loc[row.orig_key]
            assert row.caption == orig.caption and row.url == orig.url and row.json == orig.json
            assert row.similarity == pytest.approx(orig.similarity) and row.orig_source == orig.source
        # The shards are for other readers: no ledger columns (every row is ok); nf_members is a locator.
        assert not {"nf_status", "nf_error", "nf_reason"} & set(pq.columns)

        idx = (out / f"{name}.idx").read_text().splitlines()
        assert idx[0] == f"v1.2 {len(pq)}"
        for line, start in zip(idx[1:], range(0, len(infos), 3), strict=True):
            fields = line.split(" ")
            expect = []
            for i in infos[start : start + 3]:
                expect += [i.name.split(".", 1)[1], str(i.offset_data), str(i.size), i.name]
            assert fields == expect

        st = json.loads((out / f"{name}.stats.json").read_text())
        assert st["samples"] == len(pq) and st["tar_bytes"] == len(raw) and st["members_by_ext"]["jpg"] == len(pq)

    stats = json.loads((out / "_stats.json").read_text())
    allrows = pd.concat(frames)
    assert stats["input"]["samples"] == len(allrows)
    assert stats["final"] == {
        "written": len(ok),
        "filtered": int((allrows.nf_status == "filtered").sum()),
        "error": int((allrows.nf_status == "error").sum()),
    }
    assert sum(stats["final"].values()) == len(allrows)  # every input row accounted for exactly once
    errs = pd.read_parquet(out / "_errors.parquet")
    assert sorted(errs["key"]) == sorted(allrows.loc[allrows.nf_status == "error", "key"])
    assert set(errs["error_code"]) == {"decode_error"}


def test_safe_key_rule():
    assert safe_key("000123") == "000123" and safe_key("a_b-C") == "a_b-C"
    for bad in ("a.b", "a/b", "../../etc/passwd", "x" * 81, "naïve", "sp ace", ""):
        k = safe_key(bad)
        assert k != bad and len(k) <= 77 and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in k)
        assert k.split(".", 1)[0] == k  # reads back as the same WebDataset key
    assert safe_key("a.b") != safe_key("a_b") and safe_key("a.b") != safe_key("a/b")


def test_pandas_input_and_member_selection(dataset, tmp_path):
    _, frames = dataset
    r = write_webdataset(pd.concat(frames, ignore_index=True), str(tmp_path / "o"), samples_per_shard=100,
                         members=["jpg", "txt"], progress=False)
    names = [n for n, _ in read_tar(tmp_path / "o/00000.tar")]
    assert r.samples == len(ok_rows(frames)) and {n.split(".", 1)[1] for n in names} == {"jpg", "txt"}


# ------------------------------------------------------------------ determinism
def test_byte_identical_across_reruns_workers_and_partitioning(dataset, tmp_path):
    _, frames = dataset
    out = tmp_path / "out"
    runs = {}
    n = sum(len(f) for f in frames)
    variants = {
        "1 partition, synchronous": (repartition(frames, [n]), "synchronous"),
        "3 partitions, 2 threads": (frames, "threads"),
        "5 uneven partitions, 2 threads": (repartition(frames, [1, 9, 0, 20, n - 30]), "threads"),
    }
    for label, (parts, scheduler) in variants.items():
        with dask.config.set(scheduler=scheduler, num_workers=2):
            write_webdataset(to_dask(parts), str(out), samples_per_shard=4, write_index=True, overwrite=True,
                             progress=False)
        runs[label] = digests(out)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster):
        write_webdataset(to_dask(frames), str(out), samples_per_shard=4, write_index=True, overwrite=True,
                         progress=False)
    runs["LocalCluster 2 workers"] = digests(out)
    first = next(iter(runs.values()))
    assert len(first) == 4 * 6  # tar, parquet, idx, stats per shard
    for label, d in runs.items():
        assert d == first, label


def test_rerun_skips_done_shards_and_refuses_other_configs(dataset, tmp_path):
    _, frames = dataset
    out = tmp_path / "out"
    r1 = write_webdataset(to_dask(frames), str(out), samples_per_shard=6, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name[0].isdigit()}
    r2 = write_webdataset(to_dask(frames), str(out), samples_per_shard=6, progress=False)
    assert (r2.written, r2.skipped, r2.samples) == (0, r1.written, r1.samples)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name[0].isdigit()} == before

    with pytest.raises(ConfigMismatchError, match="samples_per_shard: existing 6 != new 7"):
        write_webdataset(to_dask(frames), str(out), samples_per_shard=7, progress=False)
    other = [f.assign(nf_status=f["nf_status"].where(~f["key"].str.endswith("1"), "filtered")) for f in frames]
    with pytest.raises(ConfigMismatchError, match="input"):
        write_webdataset(to_dask(other), str(out), samples_per_shard=6, progress=False)
    r3 = write_webdataset(to_dask(other), str(out), samples_per_shard=6, progress=False, overwrite=True)
    assert r3.samples == len(ok_rows(other)) < r1.samples and output_keys(out) == [
        safe_key(k) for k in ok_rows(other)["key"]
    ]


# ------------------------------------------------------------------ export-time errors
def test_unreadable_rows_are_recorded_or_raised(dataset, tmp_path):
    _, frames = dataset
    broken = [f.copy() for f in frames]
    victim = broken[2].index[broken[2]["nf_status"] == "ok"][0]
    broken[2].loc[victim, "source"] = str(tmp_path / "gone.tar")
    r = write_webdataset(to_dask(broken), str(tmp_path / "rec"), samples_per_shard=5, progress=False)
    assert r.samples == len(ok_rows(frames)) - 1
    errs = pd.read_parquet(tmp_path / "rec/_errors.parquet")
    row = errs[errs["stage"] == "export"]
    assert list(row["key"]) == [broken[2].loc[victim, "key"]] and list(row["error_code"]) == ["fetch_error"]
    assert r.stats["final"]["error"] == (pd.concat(frames).nf_status == "error").sum() + 1

    out = tmp_path / "raise"
    with pytest.raises(ExportError, match="on_error='record'"), dask.config.set(scheduler="synchronous"):
        write_webdataset(to_dask(broken), str(out), samples_per_shard=5, on_error="raise", progress=False)
    bad_shard = f"{(len(ok_rows(frames[:2])) + list(broken[2].index[broken[2].nf_status == 'ok']).index(victim)) // 5:05d}"
    assert not (out / "_done" / f"{bad_shard}.json").exists()
    assert not any(p.name.startswith(bad_shard) for p in out.iterdir())


# ------------------------------------------------------------------ crash and resume
KILL_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import dask, dask.dataframe as dd
    from nemo_frames.io.export import write_webdataset
    frames = pickle.load(open(sys.argv[1], "rb"))
    ddf = dd.from_delayed([dask.delayed(f) for f in frames], meta=frames[0].iloc[:0], verify_meta=False)
    with dask.config.set(scheduler="threads", num_workers=2):
        write_webdataset(ddf, sys.argv[2], samples_per_shard=2, write_index=True, progress=False)
    """
)


def _run_and_kill(script: Path, pickled: Path, out: Path, after_markers: int) -> str | None:
    """Run an export in a subprocess; SIGKILL it mid-write once ``after_markers`` shards are done.

    "Mid-write" = while a temporary (``.*.tmp-*``) is visible, i.e. some shard is half written. Returns what
    the kill left behind (``"temporaries"``, ``"published without marker"``), or None if the export finished
    first.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, str(script), str(pickled), str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = out / "_done"
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        if done.exists() and len(list(done.glob("*.json"))) >= after_markers:
            if any(".tmp-" in n for n in os.listdir(out)):
                p.send_signal(signal.SIGKILL)
                p.wait()
                files = {f.name for f in out.iterdir() if f.is_file()}
                marked = {m.stem for m in done.glob("*.json")}
                left = ["temporaries"] if any(".tmp-" in f for f in files) else []
                if {f.split(".")[0] for f in files if f[0].isdigit()} - marked:
                    left.append("published without marker")
                return ", ".join(left)
        time.sleep(0.0005)
    assert p.wait() == 0, p.stderr.read().decode()[-2000:]
    return None


@pytest.mark.integration
@pytest.mark.parametrize(
    "kill_after", [pytest.param((9,), id="one-kill"), pytest.param((3, 9, 17, 24), id="four-kills", marks=pytest.mark.slow)]
)
def test_sigkill_mid_export_then_rerun_loses_and_duplicates_nothing(tmp_path, kill_after):
    frames = make_dataset(tmp_path / "in", n_shards=4, per_shard=15)
    ok = ok_rows(frames)
    pickled = tmp_path / "frames.pkl"
    pd.to_pickle(frames, pickled)
    script = tmp_path / "export.py"
    script.write_text(KILL_SCRIPT)

    clean = tmp_path / "clean"
    write_webdataset(to_dask(frames), str(clean), samples_per_shard=2, write_index=True, progress=False)

    out = tmp_path / "out"
    killed = [_run_and_kill(script, pickled, out, k) for k in kill_after]
    extra = max(kill_after)
    while not any(k and "temporaries" in k for k in killed) and extra < max(kill_after) + 3:
        extra += 1  # the kill raced a rename; kill again so at least one lands inside a shard write
        killed.append(_run_and_kill(script, pickled, out, extra))
    assert any(k and "temporaries" in k for k in killed), f"no kill landed mid-write: {killed}"
    r = write_webdataset(to_dask(frames), str(out), samples_per_shard=2, write_index=True, progress=False)
    assert r.skipped >= max(kill_after) and r.written + r.skipped == 30 and r.written > 0
    keys = output_keys(out)
    assert len(keys) == len(set(keys)) == len(ok)  # nothing duplicated, nothing lost
    assert keys == [safe_key(k) for k in ok["key"]]
    assert digests(out) == digests(clean) or _same_but_source(out, clean)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def _same_but_source(a: Path, b: Path) -> bool:
    da, db = digests(a), digests(b)
    if {k: v for k, v in da.items() if not k.endswith(".parquet")} != {
        k: v for k, v in db.items() if not k.endswith(".parquet")
    }:
        return False
    for name in (k for k in da if k.endswith(".parquet")):
        pa_, pb = pd.read_parquet(a / name), pd.read_parquet(b / name)
        pd.testing.assert_frame_equal(pa_.drop(columns="source"), pb.drop(columns="source"))
    return True


NAIVE_WRITER = textwrap.dedent(
    """
    import io, sys, tarfile, time
    # A writer without the protocol: writes the final name directly, member by member.
    members = [(f"{i:06d}.jpg", bytes([i % 251]) * 20000) for i in range(20)]
    with open(sys.argv[1], "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i, (name, data) in enumerate(members):
            ti = tarfile.TarInfo(name); ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data)); f.flush()
            if i == 9:
                print("half", flush=True)
                time.sleep(60)
    """
)


@pytest.mark.integration
def test_control_output_exists_means_done_would_lose_data(tmp_path):
    """A writer killed mid-shard leaves a truncated tar under the final name: 'exists = done' loses samples."""
    script = tmp_path / "naive.py"
    script.write_text(NAIVE_WRITER)
    target = tmp_path / "00000.tar"
    p = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"half"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert target.exists()  # a naive resume would skip this shard...
    with tarfile.open(target) as tf:  # ...whose readable content is half the samples, with no error raised
        assert len(tf.getmembers()) == 10
    assert target.read_bytes()[-1024:] != b"\0" * 1024
    assert not Committer(tmp_path, stage="control", config={}).done("00000")  # the protocol does not trust it


# ------------------------------------------------------------------ S3
@pytest.fixture(scope="module")
def s3():
    server = MotoS3()
    yield server
    server.stop()


@pytest.mark.integration
def test_s3_export_matches_local_and_reads_remote_input(dataset, tmp_path, s3):
    _, frames = dataset
    local = tmp_path / "local"
    write_webdataset(to_dask(frames), str(local), samples_per_shard=8, write_index=True, progress=False)
    fs = s3.new_fs()
    prefix = f"nf-test/exp-{uuid.uuid4().hex[:8]}"
    for f in frames:  # the input shards on S3 too
        fs.put_file(f["source"].iloc[0], f"{prefix}/in/{Path(f['source'].iloc[0]).name}")
    remote_frames = [f.assign(source="s3://" + prefix + "/in/" + Path(f["source"].iloc[0]).name) for f in frames]
    url = f"s3://{prefix}/out"
    r = write_webdataset(to_dask(remote_frames), url, samples_per_shard=8, write_index=True,
                         storage_options=s3.storage_options, progress=False)
    assert r.samples == len(ok_rows(frames))
    for name in r.shards:
        for ext in ("tar", "idx", "stats.json"):
            assert fs.cat_file(f"{prefix}/out/{name}.{ext}") == (local / f"{name}.{ext}").read_bytes()
        pq = pd.read_parquet(io.BytesIO(fs.cat_file(f"{prefix}/out/{name}.parquet")))
        assert (pq["source"] == f"{url}/{name}.tar").all()
    assert sorted(fs.ls(f"{prefix}/out/_done", detail=False)) == [f"{prefix}/out/_done/{n}.json" for n in r.shards]
    again = write_webdataset(to_dask(remote_frames), url, samples_per_shard=8, write_index=True,
                             storage_options=s3.storage_options, progress=False)
    assert (again.written, again.skipped) == (0, len(r.shards))


@pytest.mark.integration
def test_s3_failed_shard_publishes_nothing(dataset, tmp_path, s3):
    _, frames = dataset
    broken = [f.copy() for f in frames]
    broken[2].loc[broken[2].index[broken[2].nf_status == "ok"][-1], "source"] = str(tmp_path / "gone.tar")
    prefix = f"nf-test/fail-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ExportError), dask.config.set(scheduler="synchronous"):
        write_webdataset(to_dask(broken), f"s3://{prefix}", samples_per_shard=8, on_error="raise",
                         storage_options=s3.storage_options, progress=False)
    fs = s3.new_fs()
    names = {p.rsplit("/", 1)[-1] for p in fs.find(prefix)}
    last = f"{(len(ok_rows(frames)) - 1) // 8:05d}"
    assert not any(n.startswith(last) for n in names) and f"{last}.json" not in names
    assert "00000.tar" in names and "00000.json" in names  # earlier shards were committed


# ------------------------------------------------------------------ DALI index
def _wds2idx_reference(tar: Path, method: str) -> str:
    """The index DALI's tools/wds2idx.py builds, by either of its two methods.

    ``"tar"`` (its primary method) derives each data offset from GNU tar's block listing: the next entry's
    header block minus the size, rounded down to a block. ``"tarfile"`` (its fallback) takes the file position
    after each header, i.e. ``TarInfo.offset_data``.
    """
    if method == "tarfile":
        with tarfile.open(tar) as tf:
            entries = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isreg()]
    else:
        if shutil.which("tar") is None:
            pytest.skip("GNU tar not installed")
        blocks = subprocess.run(["tar", "--list", "--block-number", "--file", str(tar)], capture_output=True,
                                check=True).stdout.decode().splitlines()
        with tarfile.open(tar) as tf:
            sizes = [tf.getmember(line.split(": ", 1)[1]).size for line in blocks if "**" not in line]
        entries = []
        for line, nxt, size in zip(blocks, blocks[1:], sizes, strict=False):
            end = int(nxt.split(":")[0].split()[1]) * 512
            entries.append((line.split(": ", 1)[1], (end - size) - (end - size) % 512, size))
    samples: list[list[str]] = []
    last = None
    for name, off, size in entries:
        base, ext = name.split(".", 1)
        if base != last:
            samples.append([])
            last = base
        samples[-1] += [ext, str(off), str(size), name]
    return f"v1.2 {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def test_wds2idx_reference_reproduces_the_asset_index():
    tar = assets_path("images-nemo-curator", "00000.tar")
    assert _wds2idx_reference(tar, "tarfile") == (tar.parent / "00000.idx").read_text()
    # The asset is a PAX tar: DALI's GNU-tar method lands 2 blocks late on every member (the PAX header
    # blocks), one more reason export writes GNU format, where both methods agree.
    assert _wds2idx_reference(tar, "tar") != (tar.parent / "00000.idx").read_text()


def test_dali_index_matches_dali_tool_on_reexported_asset_shard(tmp_path):
    tar = assets_path("images-nemo-curator", "00000.tar")
    members = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            members[m.name.split(".", 1)[1]] = [m.offset_data, m.size]
    caption = json.loads(tar.parent.joinpath("00000.tar").read_bytes()[members["json"][0]:][: members["json"][1]])
    df = pd.DataFrame({
        "key": ["0"], "source": [str(tar)], "image_member": ["0.jpg"], "image_offset": [members["jpg"][0]],
        "image_size": [members["jpg"][1]], "caption": [caption.get("caption")],
        "nf_members": [json.dumps(members, separators=(",", ":"))], "nf_status": ["ok"],
    })
    out = tmp_path / "out"
    write_webdataset(df, str(out), samples_per_shard=10, write_index=True, progress=False)
    ours = (out / "00000.idx").read_text()
    assert ours == _wds2idx_reference(out / "00000.tar", "tar") == _wds2idx_reference(out / "00000.tar", "tarfile")
    asset = (tar.parent / "00000.idx").read_text().splitlines()
    mine = ours.splitlines()
    assert mine[0] == asset[0] == "v1.2 1"
    # same members, sizes and names; offsets differ only because the asset uses PAX headers (2 extra blocks each)
    a, b = asset[1].split(), mine[1].split()
    assert a[0::4] == b[0::4] and a[2::4] == b[2::4] and a[3::4] == b[3::4]
    assert [int(x) for x in b[1::4]] == [512, 512 + 226304 + 512, 512 + 226304 + 512 + 512 + 512]
    with tarfile.open(out / "00000.tar") as tf:
        assert tf.extractfile("0.jpg").read() == tar.read_bytes()[members["jpg"][0]:][: members["jpg"][1]]


# ------------------------------------------------------------------ round trip through the reader
def test_round_trip_wds_table_parquet_table_wds(make_shards, tmp_path):
    from nemo_frames.io.parquet import read_parquet, write_parquet
    from nemo_frames.io.webdataset import read_webdataset

    src_dir, expected = make_shards(n_shards=3, per_shard=7)
    table = read_webdataset(str(src_dir / "*.tar"))
    write_parquet(table, tmp_path / "pq", overwrite=True)
    back = read_parquet(tmp_path / "pq")
    out = tmp_path / "out"
    r = write_webdataset(back, str(out), samples_per_shard=5, write_index=True, progress=False)
    assert r.samples == len(expected)

    again = read_webdataset(str(out / "*.tar")).compute()
    assert (again["nf_status"] == "ok").all()
    assert sorted(again["key"]) == sorted(expected)  # keys are already safe, so unchanged
    first = table.compute().set_index("key")
    for _, row in again.iterrows():
        exp = expected[row.key]
        assert row.caption == exp["caption"]
        members = json.loads(row.nf_members)
        data = Path(row.source).read_bytes()
        jpg = data[members["jpg"][0] :][: members["jpg"][1]]
        assert jpg == exp["jpg"] and data[row.image_offset :][: row.image_size] == exp["jpg"]
        assert json.loads(data[members["json"][0] :][: members["json"][1]]) == exp["json"]
        for col in ("url", "width", "aesthetic_hint", "json"):
            if col in again.columns:
                assert row[col] == first.loc[row.key, col], col

    # the per-shard Parquet is the table of the new shards: same rows and locators as a fresh scan
    meta = read_parquet(str(out / "[0-9]*.parquet")).compute().set_index("key").sort_index()
    scan = again.set_index("key").sort_index()
    for col in ("source", "image_member", "image_offset", "image_size", "caption", "nf_members"):
        assert list(meta[col]) == list(scan[col]), col
    assert list(meta["orig_source"].str.rsplit("/", n=1).str[-1].unique()) == ["00000.tar", "00001.tar", "00002.tar"]


def test_fast_tar_header_is_byte_identical_to_tarfile():
    from nemo_frames.io.export import _tar_header_slow, tar_header

    cases = [("a.jpg", 0), ("000001.jpg", 22710), ("x" * 96 + ".jpg", 1), ("x" * 97 + ".jpg", 5),
             ("ü.txt", 8**11 - 1), ("k.json", 8**11), ("k.seg.png", 123456789)]
    cases += [(f"{i * 7919}.{('jpg', 'txt', 'json')[i % 3]}", i * 104729) for i in range(300)]
    for name, size in cases:
        assert tar_header(name, size) == _tar_header_slow(name, size), (name, size)


# ------------------------------------------------------------------ write path (zero-copy views + writev) and checksums
def test_tar_bytes_match_generic_fsspec_reads_and_a_tarfile_reference(dataset, tmp_path):
    """Local input (views into one read per shard, writev) vs the same shards read through fsspec's
    in-memory filesystem, and every output tar vs one written by the standard library's tarfile."""
    import fsspec

    _, frames = dataset
    local = tmp_path / "local"
    r = write_webdataset(to_dask(frames), str(local), samples_per_shard=7, write_index=True, progress=False)
    mem = fsspec.filesystem("memory")
    prefix = f"/nf-export-{uuid.uuid4().hex[:8]}"
    mframes = []
    for f in frames:
        src = Path(f["source"].iloc[0])
        mem.pipe_file(f"{prefix}/{src.name}", src.read_bytes())
        mframes.append(f.assign(source=f"memory://{prefix}/{src.name}"))
    generic = tmp_path / "generic"
    write_webdataset(to_dask(mframes), str(generic), samples_per_shard=7, write_index=True, progress=False)
    assert len(r.shards) >= 3
    for name in r.shards:
        for ext in ("tar", "idx", "stats.json"):
            assert (generic / f"{name}.{ext}").read_bytes() == (local / f"{name}.{ext}").read_bytes(), (name, ext)
        a = pd.read_parquet(local / f"{name}.parquet")
        b = pd.read_parquet(generic / f"{name}.parquet")
        assert a.drop(columns=["source", "orig_source"]).equals(b.drop(columns=["source", "orig_source"]))
        assert (b["source"] == str(generic / f"{name}.tar")).all()
        assert b["orig_source"].str.startswith("memory://").all()

        ref = io.BytesIO()
        with tarfile.open(fileobj=ref, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for member, data in read_tar(local / f"{name}.tar"):
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 946684800, 0o644, 0, 0
                info.uname = info.gname = ""
                tf.addfile(info, io.BytesIO(data))
        assert (local / f"{name}.tar").read_bytes() == ref.getvalue(), name
    mem.rm(prefix, recursive=True)


@pytest.mark.parametrize("checksum", ["crc32", "sha256"])
def test_checksum_changes_markers_only_and_resume_mixes_algorithms(dataset, tmp_path, checksum):
    _, frames = dataset
    other = tmp_path / "out"
    write_webdataset(to_dask(frames), str(other), samples_per_shard=6, write_index=True, progress=False)
    default = digests(other)
    r = write_webdataset(to_dask(frames), str(other), samples_per_shard=6, write_index=True, progress=False,
                         checksum=checksum, overwrite=True)
    assert digests(other) == default
    c = Committer(other, stage="export-webdataset", config=json.loads((other / "_config.json").read_text())["config"])
    markers = c.markers()
    assert {m["checksum"] for m in markers.values()} == {checksum}
    assert all(c.verify(n) == [] for n in markers)
    # Resume with the default algorithm after losing two markers: old and new markers live side by side.
    for name in r.shards[:2]:
        (other / "_done" / f"{name}.json").unlink()
    again = write_webdataset(to_dask(frames), str(other), samples_per_shard=6, write_index=True, progress=False)
    assert (again.written, again.skipped) == (2, len(r.shards) - 2)
    markers = c.markers()
    assert [markers[n]["checksum"] for n in r.shards] == ["xxh3_64"] * 2 + [checksum] * (len(r.shards) - 2)
    assert all(c.verify(n) == [] for n in markers) and digests(other) == default
    (other / f"{r.shards[-1]}.tar").write_bytes((other / f"{r.shards[-1]}.tar").read_bytes()[:-1] + b"\1")
    assert c.verify(r.shards[-1]) == [f"{r.shards[-1]}.tar: size/{checksum} differ from the marker"]


def test_export_keeps_the_ledger_columns_only_when_asked(dataset, tmp_path):
    _, frames = dataset
    plain = write_webdataset(to_dask(frames), str(tmp_path / "plain"), samples_per_shard=50, progress=False)
    kept = write_webdataset(to_dask(frames), str(tmp_path / "kept"), samples_per_shard=50, progress=False,
                            ledger_columns=True)
    a = pd.read_parquet(tmp_path / "plain" / f"{plain.shards[0]}.parquet")
    b = pd.read_parquet(tmp_path / "kept" / f"{kept.shards[0]}.parquet")
    assert "nf_status" not in a.columns and (b["nf_status"] == "ok").all()
    assert list(a.columns) == [c for c in b.columns if c not in ("nf_status", "nf_error", "nf_reason")]
    # Only the Parquet differs: the tars are byte-identical.
    assert (tmp_path / "plain" / f"{plain.shards[0]}.tar").read_bytes() == (tmp_path / "kept" / f"{kept.shards[0]}.tar").read_bytes()
