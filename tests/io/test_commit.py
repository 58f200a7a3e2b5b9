"""The commit protocol: atomic publish, exclusive done markers, sweep, config checks — local and S3 (moto)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import uuid
from pathlib import Path

import pytest

from nemo_frames.io.commit import (
    CONFIG_FILE,
    Committer,
    ConfigMismatchError,
    NonDeterministicOutputError,
    config_hash,
    output_name,
)

from ._export_fixtures import MotoS3, jpeg


@pytest.fixture(scope="module")
def s3():
    server = MotoS3()
    yield server
    server.stop()


def _payload(n: int = 3) -> dict[str, bytes]:
    return {f"00001.part{j}": jpeg(j) for j in range(n)}


def test_config_hash_is_stable_and_sensitive():
    a = {"samples_per_shard": 100, "members": ["jpg", "txt"], "nested": {"b": 1, "a": 2}}
    b = {"nested": {"a": 2, "b": 1}, "members": ["jpg", "txt"], "samples_per_shard": 100}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash({**a, "samples_per_shard": 101})
    assert config_hash(a) != config_hash({**a, "members": ["txt", "jpg"]})


def test_output_name_is_deterministic_and_safe():
    h = config_hash({"x": 1})
    assert output_name(7, stage="score", config_hash=h) == f"score-00007-{h}"
    n1 = output_name("s3://bucket/a/00000.tar", stage="score", config_hash=h)
    n2 = output_name("s3://bucket/b/00000.tar", stage="score", config_hash=h)
    assert n1 != n2 and n1 == output_name("s3://bucket/a/00000.tar", stage="score", config_hash=h)
    assert "/" not in n1 and ".." not in output_name("../../x.y.tar", stage="s", config_hash=h)


def test_write_publishes_files_and_marker_with_checksums(tmp_path):
    c = Committer(tmp_path / "out", stage="t", config={"a": 1})
    files = _payload()
    files["00001.stream"] = lambda f: [f.write(jpeg(9)[i : i + 1000]) for i in range(0, len(jpeg(9)), 1000)]
    r = c.write("00001", files, counts={"samples": 3})
    assert r.won
    marker = json.loads((tmp_path / "out/_done/00001.json").read_text())
    assert marker["config_hash"] == c.config_hash and marker["counts"] == {"samples": 3}
    for name, meta in marker["files"].items():
        data = (tmp_path / "out" / name).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (tmp_path / "out/00001.stream").read_bytes() == jpeg(9)
    assert c.verify("00001") == []
    assert [p.name for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name] == []
    # a second write of a done unit publishes nothing new and reports the existing marker
    r2 = c.write("00001", {"00001.part0": b"different"})
    assert not r2.won and (tmp_path / "out/00001.part0").read_bytes() == jpeg(0)


def test_done_trusts_markers_not_files(tmp_path):
    c = Committer(tmp_path, stage="t", config={})
    (tmp_path / "00002.tar").write_bytes(b"truncated leftover of a killed writer")
    assert not c.done("00002")
    (tmp_path / "00002.tar").unlink()
    c.write("00002", {"00002.tar": b"x" * 10})
    (tmp_path / "00002.tar").unlink()  # a marker without its file is still 'done'; verify() reports it
    assert c.done("00002") and c.verify("00002") == ["00002.tar: missing"]


def test_exception_mid_write_publishes_nothing(tmp_path):
    c = Committer(tmp_path, stage="t", config={})

    def boom(f):
        f.write(jpeg(1))
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        c.write("00003", {"00003.a": b"first file is fine", "00003.b": boom})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, "_done"]
    assert not c.done("00003") and list((tmp_path / "_done").iterdir()) == []


def test_open_sweeps_temporaries_only(tmp_path):
    Committer(tmp_path, stage="t", config={})
    tmp1 = tmp_path / f".00000.tar.tmp-{uuid.uuid4().hex}"
    tmp2 = tmp_path / "_done" / f".00000.json.tmp-{uuid.uuid4().hex}"
    keep = [tmp_path / ".hidden", tmp_path / "00000.tar", tmp_path / "notes.tmp-1"]
    for p in [tmp1, tmp2, *keep]:
        p.write_bytes(b"x")
    Committer(tmp_path, stage="t", config={})
    assert not tmp1.exists() and not tmp2.exists()
    assert all(p.exists() for p in keep)


def test_resume_under_another_config_is_refused_with_a_clear_message(tmp_path):
    c = Committer(tmp_path, stage="export", config={"samples_per_shard": 100, "members": None})
    c.write("00000", {"00000.tar": b"abc"})
    with pytest.raises(ConfigMismatchError) as e:
        Committer(tmp_path, stage="export", config={"samples_per_shard": 50, "members": None})
    msg = str(e.value)
    assert "samples_per_shard: existing 100 != new 50" in msg
    assert "overwrite=True" in msg and "new output directory" in msg
    # same config resumes; overwrite=True starts afresh (old marker and files gone)
    assert Committer(tmp_path, stage="export", config={"samples_per_shard": 100, "members": None}).done("00000")
    c2 = Committer(tmp_path, stage="export", config={"samples_per_shard": 50, "members": None}, overwrite=True)
    assert not c2.done("00000") and not (tmp_path / "00000.tar").exists()
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["config_hash"] == c2.config_hash


def test_unsafe_names_are_rejected(tmp_path):
    c = Committer(tmp_path, stage="t", config={})
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="not a safe file name"):
            c.write("u", {bad: b"x"})


def test_losing_writer_discards_its_files(tmp_path):
    a = Committer(tmp_path, stage="t", config={})
    b = Committer(tmp_path, stage="t", config={}, sweep=False)

    def slow(f):
        f.write(b"B's bytes")
        assert a.write("00004", {"00004.x": b"A's bytes"}).won  # A finishes while B is still writing

    r = b.write("00004", {"00004.x": slow})
    assert not r.won and (tmp_path / "00004.x").read_bytes() == b"A's bytes"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def _race(root: str, barrier, results, i: int, so=None) -> None:
    c = Committer(root, stage="race", config={}, storage_options=so, sweep=False)
    files = {"00000.jpg": jpeg(3), "00000.txt": b"same bytes from every writer"}
    barrier.wait()
    results.put((i, c.write("00000", files).won))


def _run_race(root: str, n: int, so=None) -> list[bool]:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(root, barrier, results, i, so)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    return [results.get(timeout=5)[1] for _ in procs]


@pytest.mark.integration
def test_racing_writers_exactly_one_winner_local(tmp_path):
    for trial in range(3):
        root = str(tmp_path / f"t{trial}")
        Committer(root, stage="race", config={})
        won = _run_race(root, 4)
        assert sorted(won) == [False, False, False, True]
        c = Committer(root, stage="race", config={})
        assert c.verify("00000") == []


def test_nondeterministic_loser_is_detected(tmp_path, monkeypatch):
    a = Committer(tmp_path, stage="t", config={})
    b = Committer(tmp_path, stage="t", config={}, sweep=False)
    a.write("00005", {"00005.x": b"A"})
    # B passes both pre-publish checks (as if A's marker landed just after them), then loses the marker race
    monkeypatch.setattr(b, "done", lambda name: False)
    with pytest.raises(NonDeterministicOutputError, match="different bytes"):
        b.write("00005", {"00005.x": b"B"})


# ------------------------------------------------------------------ S3 (moto)
@pytest.mark.integration
def test_s3_write_done_and_markers(s3):
    root = f"s3://nf-test/commit-{uuid.uuid4().hex[:8]}"
    c = Committer(root, stage="t", config={"a": 1}, storage_options=s3.storage_options)
    assert not c.done("00000")
    assert c.write("00000", _payload(2), counts={"samples": 2}).won
    fs = s3.new_fs()
    p = root.removeprefix("s3://")
    assert fs.cat_file(f"{p}/00001.part1") == jpeg(1)
    assert c.done("00000") and c.verify("00000") == [] and set(c.markers()) == {"00000"}
    assert not c.write("00000", _payload(2)).won
    with pytest.raises(ConfigMismatchError):
        Committer(root, stage="t", config={"a": 2}, storage_options=s3.storage_options)


@pytest.mark.integration
def test_s3_exception_mid_write_publishes_nothing(s3):
    root = f"s3://nf-test/commit-{uuid.uuid4().hex[:8]}"
    c = Committer(root, stage="t", config={}, storage_options=s3.storage_options)
    big = os.urandom(6 * 2**20)  # larger than one multipart chunk, so a naive writer would upload parts

    def boom(f):
        f.write(big)
        raise RuntimeError("network gone")

    with pytest.raises(RuntimeError, match="network gone"):
        c.write("00000", {"00000.a": b"small", "00000.b": boom})
    fs = s3.new_fs()
    p = root.removeprefix("s3://")
    assert fs.ls(p, detail=False) == [f"{p}/{CONFIG_FILE}"]
    assert not c.done("00000")

    # the control: fsspec's plain writer publishes the partial object on an exception
    with pytest.raises(RuntimeError), fs.open(f"{p}/naive.bin", "wb") as f:
        f.write(big[:1000])
        raise RuntimeError("network gone")
    assert fs.size(f"{p}/naive.bin") == 1000


@pytest.mark.integration
def test_s3_racing_writers_exactly_one_winner(s3):
    root = f"s3://nf-test/race-{uuid.uuid4().hex[:8]}"
    Committer(root, stage="race", config={}, storage_options=s3.storage_options)
    won = _run_race(root, 4, s3.storage_options)
    assert sorted(won) == [False, False, False, True]
    assert Committer(root, stage="race", config={}, storage_options=s3.storage_options).verify("00000") == []


@pytest.mark.integration
def test_s3_marker_is_exclusive(s3):
    root = f"s3://nf-test/excl-{uuid.uuid4().hex[:8]}"
    c = Committer(root, stage="t", config={}, storage_options=s3.storage_options)
    assert c._create_exclusive(c.marker_path("x"), b"{}")
    assert not c._create_exclusive(c.marker_path("x"), b'{"other": 1}')
    assert json.loads(s3.new_fs().cat_file(c.marker_path("x"))) == {}


def test_pickled_committer_does_not_sweep(tmp_path):
    import pickle

    c = Committer(tmp_path, stage="t", config={})
    tmp = tmp_path / f".00000.tar.tmp-{uuid.uuid4().hex}"
    tmp.write_bytes(b"in flight on another worker")
    c2 = pickle.loads(pickle.dumps(c))
    assert tmp.exists() and c2.config_hash == c.config_hash
    assert Path(c2.root) == tmp_path
