"""The commit protocol: deterministic names, atomic publish, done markers, resume (DESIGN §7).

A *unit* of output (one output shard: its ``.tar``, ``.parquet``, ``.idx`` and
``.stats.json``) is published in three steps:

1. every file is written to a temporary name **in the destination directory**
   (``.{file}.tmp-{uuid}``), flushed and fsynced (all files of a unit, and the
   marker's temporary, fsynced together so the filesystem can commit them in one
   journal transaction), then renamed over the final name
   (local / POSIX: ``os.replace`` is atomic within one directory). On object stores
   (S3, GCS, ...) there is no rename: each file is written to a local temporary file
   and uploaded with ``fs.put_file``, and an object becomes visible only when its
   upload completes, so an exception or a kill mid-write publishes nothing;
2. a done marker ``_done/{unit}.json`` is created **exclusively** (local: a hard
   link of a fully written temporary file, which fails if the marker exists; S3:
   a conditional ``PUT`` with ``If-None-Match: *``). It records the file sizes,
   their checksums (``checksum``: xxh3_64 by default, crc32 or sha256; the marker
   names its algorithm), counts and the config hash;
3. readers and resumed runs trust only markers: :meth:`Committer.done` never looks
   at data files, because a file that exists may be a truncated leftover of a
   killed writer that did not use this protocol.

When two writers race for one unit, exactly one creates the marker; the other
discards its work (it checks for a marker before publishing, and if it loses the
marker race after publishing, it verifies that the files it wrote have the
winner's checksums, which holds because outputs are deterministic).

On open, a :class:`Committer` sweeps temporaries left by killed writers and
writes (or checks) ``_config.json``: resuming under a different config raises
:class:`ConfigMismatchError` naming the keys that differ.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

FileContent = bytes | Callable[[IO[bytes]], Any]
"""The content of one output file: bytes, or a function that writes to a binary file object."""

CONFIG_FILE = "_config.json"
DONE_DIR = "_done"
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_IOV_MAX = 1024  # Linux's limit on buffers per writev call
_WRITEV_BYTES = 1 << 20

Checksum = Literal["xxh3_64", "crc32", "sha256"]
"""Checksum algorithms for done markers: xxh3_64 (about 10 GB/s), crc32 (zlib, about 2 GB/s), sha256 (under 1 GB/s)."""
CHECKSUMS: tuple[str, ...] = ("xxh3_64", "crc32", "sha256")
DEFAULT_CHECKSUM: Checksum = "xxh3_64"


class ConfigMismatchError(RuntimeError):
    """Resuming into an output directory written under a different config."""


class NonDeterministicOutputError(RuntimeError):
    """Two writers of the same unit produced different bytes."""


def canonical_json(obj: Any) -> str:
    """Stable JSON text: sorted keys, no whitespace, non-JSON values as ``str``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """A 12-hex-digit hash of a config (sha256 of its canonical JSON).

    Examples
    --------
    >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    True
    >>> len(config_hash({}))
    12
    """
    return hashlib.sha256(canonical_json(dict(config)).encode("utf-8")).hexdigest()[:12]


def output_name(part: str | int, *, stage: str, config_hash: str) -> str:
    """The deterministic name of the output of one input shard / partition for one stage.

    ``part`` is a partition number or an input shard URL; a URL becomes its file stem
    plus a short hash of the whole URL, so two shards named ``00000.tar`` in different
    directories get different names.

    Examples
    --------
    >>> output_name(3, stage="score", config_hash="0123456789ab")
    'score-00003-0123456789ab'
    >>> output_name("s3://b/x/00000.tar", stage="score", config_hash="0123456789ab")
    'score-00000-decf138b-0123456789ab'
    """
    if isinstance(part, int):
        stem = f"{part:05d}"
    else:
        base = str(part).rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
        base = re.sub(r"[^A-Za-z0-9_\-]", "_", base)[:64] or "part"
        stem = f"{base}-{hashlib.sha256(str(part).encode('utf-8')).hexdigest()[:8]}"
    return f"{stage}-{stem}-{config_hash}"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local filesystem (where ``os.replace`` is atomic)."""
    return isinstance(fs, LocalFileSystem)


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def new_hasher(checksum: str) -> Any:
    """A fresh incremental hasher (``update`` / ``hexdigest``) for one of :data:`CHECKSUMS`.

    Examples
    --------
    >>> h = new_hasher("crc32"); h.update(b"hello"); h.hexdigest()
    '3610a686'
    """
    if checksum == "sha256":
        return hashlib.sha256()
    if checksum == "crc32":
        return _Crc32()
    if checksum == "xxh3_64":
        try:
            import xxhash
        except ImportError as exc:  # pragma: no cover - xxhash is a core dependency
            raise ImportError(
                "commit: checksum='xxh3_64' needs the xxhash package (uv pip install xxhash), "
                "or pass checksum='crc32' or 'sha256'"
            ) from exc
        return xxhash.xxh3_64()
    raise ValueError(f"commit: checksum must be one of {list(CHECKSUMS)}, found {checksum!r}")


def checksum_of(data: bytes | bytearray | memoryview, checksum: str) -> str:
    """The hex checksum of ``data`` with one of :data:`CHECKSUMS`.

    Examples
    --------
    >>> checksum_of(b"hello", "sha256")[:12]
    '2cf24dba5fb0'
    """
    h = new_hasher(checksum)
    h.update(data)
    return h.hexdigest()


def _marker_checksum(marker: Mapping[str, Any]) -> str:
    # Markers written before the checksum became selectable hold sha256 and no "checksum" key.
    return str(marker.get("checksum", "sha256"))


class _HashingWriter:
    """A binary file wrapper that counts and hashes what goes through it.

    ``writev`` hands a list of buffers (memoryviews of a memory-mapped input, headers,
    padding) to the kernel in one call, without joining them into a new buffer first.
    """

    def __init__(self, f: IO[bytes], checksum: str = DEFAULT_CHECKSUM) -> None:
        self._f = f
        self.hasher = new_hasher(checksum)
        self.size = 0
        try:
            self._fd: int | None = f.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self._f.write(data)

    def writev(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write byte buffers in order (hashing them); return the bytes written.

        Buffers go to the kernel in groups of about 1 MiB, each hashed just before it
        is written, so the bytes are still in the CPU cache for the copy.
        """
        if self._fd is None:
            return sum(self.write(b) for b in buffers)
        self._f.flush()
        total = 0
        group: list[bytes | bytearray | memoryview] = []
        nbytes = 0
        for b in buffers:
            self.hasher.update(b)
            group.append(b)
            nbytes += len(b)
            if nbytes >= _WRITEV_BYTES or len(group) == _IOV_MAX:
                _writev_all(self._fd, group)
                total += nbytes
                group, nbytes = [], 0
        if group:
            _writev_all(self._fd, group)
            total += nbytes
        self.size += total
        return total

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True


def _writev_all(fd: int, buffers: list[bytes | bytearray | memoryview]) -> None:
    """Write byte buffers to ``fd`` with as few ``writev`` calls as the kernel allows."""
    views = list(buffers)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + _IOV_MAX])
        # A regular file takes everything but past ~2 GiB per call (Linux); resume after a short write.
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = memoryview(views[i])[n:]


class _Syncer:
    """fsync files in background threads, each started as soon as its file is written.

    The disk writes back one file while the next is being produced, and fsyncs that
    run at the same time share journal commits (ext4, xfs). :meth:`wait` joins them
    and raises the first error; call it before closing the files.
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, fd: int) -> None:
        t = threading.Thread(target=self._run, args=(fd,), daemon=True)
        t.start()
        self._threads.append(t)

    def _run(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except BaseException as exc:  # re-raised by wait(), in the writing thread
            self._errors.append(exc)

    def wait(self) -> None:
        for t in self._threads:
            t.join()
        self._threads.clear()
        if self._errors:
            raise self._errors[0]


def _write_content(f: IO[bytes], content: FileContent, checksum: str = DEFAULT_CHECKSUM) -> tuple[int, str]:
    w = _HashingWriter(f, checksum)
    if isinstance(content, bytes | bytearray | memoryview):
        w.write(bytes(content))
    elif callable(content):
        content(w)  # type: ignore[arg-type]
    else:
        raise TypeError(f"file content must be bytes or a callable writing to a file object, found {type(content).__name__}")
    return w.size, w.hasher.hexdigest()


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class CommitResult:
    """What :meth:`Committer.write` did.

    Attributes
    ----------
    name : str
        The unit name.
    won : bool
        True when this writer created the done marker; False when another writer
        had already committed the unit (this writer's files were discarded or
        verified identical).
    marker : dict
        The marker content now in place (this writer's or the winner's).
    """

    name: str
    won: bool
    marker: dict[str, Any] = field(default_factory=dict)


class Committer:
    """Publish output units atomically under ``root`` and record them with done markers.

    Parameters
    ----------
    root : str
        Output directory: a local path or an fsspec URL (``s3://bucket/prefix``).
    stage : str
        Name of the stage writing here (recorded in ``_config.json`` and markers).
    config : Mapping
        Everything that determines the output bytes. Its :func:`config_hash` is
        written to ``_config.json``; opening an existing directory with another
        hash raises :class:`ConfigMismatchError` unless ``overwrite=True``.
    storage_options : dict, optional
        fsspec options for ``root`` (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
    overwrite : bool
        Start afresh: remove the markers, ``_config.json``, the files the markers
        list and ``run_files``, then write the new config.
    run_files : tuple of str
        Run-level files (e.g. ``stats.json``) removed by ``overwrite=True``.
    sweep : bool
        Remove temporaries (``.*.tmp-*``) left by killed writers. Do this once per
        run, on the driver, before workers start writing: a worker-side committer
        is obtained by pickling this one, which does not sweep again.
    fsync : bool
        fsync data files before the rename (local filesystems). A killed *process*
        never needs it (the page cache survives); a machine crash or power loss does.
        Markers and ``_config.json`` are always fsynced.
    checksum : {"xxh3_64", "crc32", "sha256"}
        Checksum of each file recorded in the done markers (with the algorithm's
        name, so markers of other algorithms stay verifiable). The files' bytes do
        not depend on it, so it is not part of the config.

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> c = Committer(root, stage="demo", config={"n": 1})
    >>> c.done("00000")
    False
    >>> c.write("00000", {"00000.txt": b"hello"}, counts={"samples": 1}).won
    True
    >>> c.done("00000"), c.write("00000", {"00000.txt": b"hello"}).won
    (True, False)
    """

    def __init__(
        self,
        root: str,
        *,
        stage: str,
        config: Mapping[str, Any],
        storage_options: dict[str, Any] | None = None,
        overwrite: bool = False,
        run_files: tuple[str, ...] = (),
        sweep: bool = True,
        fsync: bool = True,
        checksum: Checksum = DEFAULT_CHECKSUM,
    ) -> None:
        new_hasher(checksum)  # fail early on an unknown algorithm or a missing package
        self.checksum = checksum
        self.storage_options = dict(storage_options or {})
        self.fs, path = fsspec.core.url_to_fs(str(root), **self.storage_options)
        self.root = path.rstrip("/") if path not in ("/", "") else path
        self.url = str(root).rstrip("/")
        self.stage = stage
        self.config = json.loads(canonical_json(dict(config)))
        self.config_hash = config_hash(self.config)
        self.local = is_local(self.fs)
        self.run_files = tuple(run_files)
        self.fsync = fsync
        self._open(overwrite=overwrite, sweep=sweep)

    # ------------------------------------------------------------------ paths
    def path(self, filename: str) -> str:
        """The full path (fsspec form, no protocol) of ``filename`` under the root."""
        return f"{self.root}/{filename}"

    def url_of(self, filename: str) -> str:
        """The URL of ``filename`` as a reader should be given it (with protocol for remote roots)."""
        return f"{self.url}/{filename}"

    def marker_path(self, name: str) -> str:
        """Path of the done marker of unit ``name``."""
        return self.path(f"{DONE_DIR}/{name}.json")

    @staticmethod
    def _check_name(name: str) -> None:
        if not _SAFE_NAME_RE.match(name) or ".." in name:
            raise ValueError(
                f"commit: output name {name!r} is not a safe file name "
                "(expected letters, digits, '_', '-', '.'; no '/', no '..', no leading dot)"
            )

    # ------------------------------------------------------------------ open
    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickling (on a worker) must not sweep or rewrite the config: the driver did.
        self.__dict__.update(state)

    def _open(self, *, overwrite: bool, sweep: bool) -> None:
        fs = self.fs
        fs.makedirs(self.root, exist_ok=True)
        if self.local:
            os.makedirs(self.path(DONE_DIR), exist_ok=True)
        if sweep:
            self.sweep()
        if overwrite:
            self._clear()
        mine = {"stage": self.stage, "config_hash": self.config_hash, "config": self.config}
        data = (json.dumps(mine, sort_keys=True, indent=2, default=str) + "\n").encode("utf-8")
        cfg = self.path(CONFIG_FILE)
        if self._create_exclusive(cfg, data):
            return
        theirs = json.loads(self._cat(cfg))
        if theirs.get("config_hash") != self.config_hash or theirs.get("stage") != self.stage:
            raise ConfigMismatchError(self._mismatch_message(theirs))

    def _mismatch_message(self, theirs: dict[str, Any]) -> str:
        old = theirs.get("config", {})
        diffs = []
        for k in sorted(set(old) | set(self.config)):
            if old.get(k, "<absent>") != self.config.get(k, "<absent>"):
                a = canonical_json(old.get(k, "<absent>"))
                b = canonical_json(self.config.get(k, "<absent>"))
                diffs.append(f"  {k}: existing {a[:120]} != new {b[:120]}")
        if theirs.get("stage") != self.stage:
            diffs.insert(0, f"  stage: existing {theirs.get('stage')!r} != new {self.stage!r}")
        return (
            f"commit: {self.url} holds output of stage {theirs.get('stage')!r} written with config hash "
            f"{theirs.get('config_hash')}, but this run has config hash {self.config_hash}; "
            "resuming would mix outputs of two configs. What differs:\n"
            + "\n".join(diffs or ["  (no key-level difference; the hash function or format changed)"])
            + "\nFix: write to a new output directory, or pass overwrite=True to delete the old output first."
        )

    def sweep(self) -> list[str]:
        """Remove temporaries (``.*.tmp-*``) left by killed writers; return their names."""
        removed = []
        for d in (self.root, self.path(DONE_DIR)):
            try:
                names = self.fs.ls(d, detail=False)
            except FileNotFoundError:
                continue
            for p in names:
                base = p.rstrip("/").rsplit("/", 1)[-1]
                if _TMP_RE.match(base):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(p)
                    removed.append(base)
        return removed

    def _clear(self) -> None:
        for name, marker in self.markers().items():
            for fname in marker.get("files", {}):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path(fname))
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.marker_path(name))
        for fname in (*self.run_files, CONFIG_FILE):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(fname))
        self._invalidate(self.root)

    # ------------------------------------------------------------------ markers
    def _invalidate(self, path: str) -> None:
        if not self.local:
            self.fs.invalidate_cache(path)

    def _cat(self, path: str) -> bytes:
        self._invalidate(path)
        return self.fs.cat_file(path)

    def done(self, name: str) -> bool:
        """Whether unit ``name`` has a done marker (data files are never consulted)."""
        p = self.marker_path(name)
        if self.local:
            return os.path.exists(p)
        self._invalidate(p)
        return bool(self.fs.exists(p))

    def marker(self, name: str) -> dict[str, Any] | None:
        """The marker content of unit ``name``, or None when it is not done."""
        try:
            return json.loads(self._cat(self.marker_path(name)))
        except FileNotFoundError:
            return None

    def markers(self) -> dict[str, dict[str, Any]]:
        """All done markers under the root, by unit name."""
        d = self.path(DONE_DIR)
        self._invalidate(d)
        try:
            paths = self.fs.ls(d, detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for p in sorted(paths):
            base = p.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and not base.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    out[base[: -len(".json")]] = json.loads(self._cat(p))
        return out

    def verify(self, name: str) -> list[str]:
        """Check unit ``name``'s files against its marker; return a list of problems (empty = fine)."""
        m = self.marker(name)
        if m is None:
            return [f"{name}: no done marker"]
        algo = _marker_checksum(m)
        problems = []
        for fname, meta in m.get("files", {}).items():
            try:
                data = self._cat(self.path(fname))
            except FileNotFoundError:
                problems.append(f"{fname}: missing")
                continue
            if len(data) != meta["size"] or checksum_of(data, algo) != meta.get(algo):
                problems.append(f"{fname}: size/{algo} differ from the marker")
        return problems

    def _write_tmp(self, path: str, data: bytes, *, fsync: bool) -> str:
        d = os.path.dirname(path)
        tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        return tmp

    def _create_exclusive(self, path: str, data: bytes, *, tmp: str | None = None, sync_dir: bool = True) -> bool:
        """Create ``path`` with ``data`` only if it does not exist; True if we created it.

        Local: ``tmp``, when given, is a durable temporary of ``data`` beside ``path``
        (written and fsynced by the caller); it is linked and removed. ``sync_dir=False``
        leaves the directory fsync (which makes the new name durable) to the caller.
        """
        if self.local:
            d = os.path.dirname(path)
            if tmp is None:
                tmp = self._write_tmp(path, data, fsync=True)
            try:
                # link() fails if the target exists and publishes a complete file in one step;
                # open(..., "x") would expose an empty marker to a crash between create and write.
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                try:
                    with open(path, "xb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                except FileExistsError:
                    return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if sync_dir:
                _fsync_dir(d)
            return True
        # s3fs sends If-None-Match: * for mode="create" (atomic on AWS S3 and moto); filesystems
        # without conditional writes fall back to fsspec's exists-then-write, which has a race window.
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        finally:
            self._invalidate(path)
        return True

    def sync_markers(self) -> None:
        """Make every marker created so far durable (local: one fsync of ``_done/``).

        Notes
        -----
        Writers that pass ``durable_marker=False`` to :meth:`write` call this once at
        the end of a run instead of paying one directory fsync per unit. That keeps the
        crash guarantee: a unit's data files are renamed into place and their directory
        fsynced *before* its marker is linked, so any marker that is on disk after a
        crash points at complete, durable files. A machine crash before this call can
        only lose markers whose link was not yet written back; those units then count as
        not done and a rerun writes them again, under the same names and with the same
        bytes (outputs are deterministic, ``os.replace`` is atomic), so nothing is lost
        or duplicated. Run-level files that summarise the units must be published after
        this call, so they never describe a unit whose marker a crash could still take.
        Object stores need nothing here: a marker is durable once its PUT returns.
        """
        if self.local:
            _fsync_dir(self.path(DONE_DIR))

    # ------------------------------------------------------------------ write
    def publish(self, filename: str, content: FileContent) -> tuple[int, str]:
        """Atomically write one file under the root (replacing any old one); return (size, checksum).

        No marker is written: use it for run-level files such as ``stats.json``.
        """
        self._check_name(filename)
        final = self.path(filename)
        if self.local:
            tmp = self.path(f".{filename}.tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    size, digest = _write_content(f, content, self.checksum)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return size, digest
        tmpdir = tempfile.mkdtemp(prefix="nemo_frames-commit-")
        try:
            local = os.path.join(tmpdir, filename)
            with open(local, "wb") as f:
                size, digest = _write_content(f, content, self.checksum)
            # An object becomes visible only when its upload completes (single PUT or completed multipart).
            self.fs.put_file(local, final)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            self._invalidate(final)
        return size, digest

    def _stage_local(
        self,
        files: Mapping[str, FileContent],
        tmpdir: str | None,
        staged: dict[str, tuple[str, int, str]],
        opened: list[IO[bytes]],
        syncer: _Syncer | None,
    ) -> None:
        # Fills ``staged`` as it goes so the caller can remove partial temporaries on an exception.
        # The files stay open (in ``opened``, closed by the caller after ``syncer.wait()``).
        for fname, content in files.items():
            self._check_name(fname)
            if self.local:
                tmp = self.path(f".{fname}.tmp-{uuid.uuid4().hex}")
            else:
                assert tmpdir is not None
                tmp = os.path.join(tmpdir, fname)
            staged[fname] = (tmp, 0, "")
            f = open(tmp, "wb")  # closed by the caller, after the joint fsync
            opened.append(f)
            size, digest = _write_content(f, content, self.checksum)
            f.flush()
            if syncer is not None:
                syncer.start(f.fileno())
            staged[fname] = (tmp, size, digest)

    def write(
        self,
        name: str,
        files: Mapping[str, FileContent],
        *,
        counts: Mapping[str, Any] | None = None,
        durable_marker: bool = True,
    ) -> CommitResult:
        """Publish ``files`` as unit ``name`` and create its done marker.

        Parameters
        ----------
        name : str
            Unit name (e.g. ``"00003"``); the marker is ``_done/{name}.json``.
        files : dict
            File name (relative to the root) → bytes or a callable writing to a file object.
        counts : dict, optional
            Counts recorded in the marker (samples, bytes, errors, ...).
        durable_marker : bool
            Local: fsync the marker directory after linking the marker, so the marker
            survives a machine crash when this returns. ``False`` leaves that to one
            :meth:`sync_markers` call after many units (see its notes for why that is
            safe); the data files are durable before the marker exists either way.

        Returns
        -------
        CommitResult
            ``won=False`` when the unit was already committed by another writer.

        Examples
        --------
        >>> import tempfile
        >>> c = Committer(tempfile.mkdtemp(), stage="demo", config={})
        >>> r = c.write("a", {"a.bin": lambda f: f.write(b"xyz")})
        >>> r.won, r.marker["files"]["a.bin"]["size"]
        (True, 3)
        """
        self._check_name(name)
        if self.done(name):
            return CommitResult(name, False, self.marker(name) or {})
        tmpdir = None if self.local else tempfile.mkdtemp(prefix="nemo_frames-commit-")
        staged: dict[str, tuple[str, int, str]] = {}
        opened: list[IO[bytes]] = []
        marker_tmp: str | None = None
        syncer = _Syncer() if self.local else None
        try:
            self._stage_local(files, tmpdir, staged, opened, syncer if self.fsync else None)
            if self.done(name):
                # Someone finished first while we were writing: discard our copy, publish nothing.
                return CommitResult(name, False, self.marker(name) or {})
            marker = {
                "name": name,
                "stage": self.stage,
                "config_hash": self.config_hash,
                "checksum": self.checksum,
                "files": {f: {"size": s, self.checksum: h} for f, (_, s, h) in staged.items()},
                "counts": dict(counts or {}),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "writer": f"{os.uname().nodename}:{os.getpid()}",
            }
            data = (json.dumps(marker, sort_keys=True, indent=2, default=str) + "\n").encode("utf-8")
            if self.local:
                # The marker's temporary becomes durable in the same round of fsyncs as the data files;
                # it is linked into place only after the renames below are durable too.
                marker_tmp = self.path(f"{DONE_DIR}/.{name}.json.tmp-{uuid.uuid4().hex}")
                mf = open(marker_tmp, "wb")  # closed with the others below
                opened.append(mf)
                mf.write(data)
                mf.flush()
                assert syncer is not None
                syncer.start(mf.fileno())
                syncer.wait()
            for f in opened:
                f.close()
            for fname, (tmp, _, _) in staged.items():
                if self.local:
                    os.replace(tmp, self.path(fname))
                else:
                    self.fs.put_file(tmp, self.path(fname))
                    self._invalidate(self.path(fname))
            if self.local and self.fsync:
                _fsync_dir(self.root)
            created = self._create_exclusive(self.marker_path(name), data, tmp=marker_tmp,
                                             sync_dir=durable_marker)
            marker_tmp = None  # linked and removed by _create_exclusive
            if created:
                return CommitResult(name, True, marker)
            winner = self.marker(name) or {}
            mine = marker["files"]
            theirs = winner.get("files", {})
            algo = _marker_checksum(winner)
            if algo == self.checksum:
                differs = any(theirs.get(f, {}).get(algo) != v[algo] for f, v in mine.items())
            else:
                # The winner used another algorithm: check the files now in place (ours) against its marker.
                differs = bool(self.verify(name)) or set(theirs) != set(mine)
            if differs:
                raise NonDeterministicOutputError(
                    f"commit: unit {name!r} under {self.url} was committed by another writer "
                    f"({winner.get('writer')}) with different bytes than this writer produced; outputs must be "
                    "deterministic for resume to be safe. Check for unordered iteration or timestamps in the "
                    "output, then rerun with overwrite=True."
                )
            return CommitResult(name, False, winner)
        finally:
            if syncer is not None:
                with contextlib.suppress(BaseException):
                    syncer.wait()  # no fsync may still use a descriptor closed below
            for f in opened:
                f.close()
            if marker_tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker_tmp)
            if self.local:
                for tmp, _, _ in staged.values():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- run directory lock
LOCK_FILE = ".nf-run.lock"


class DirectoryLockedError(RuntimeError):
    """Another run holds the exclusive lock on this directory (its pid, host and start time are in the message)."""


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike[str], *, what: str = "run") -> Any:
    """Hold an exclusive lock on a local directory for the duration of the block.

    The lock is ``fcntl.flock`` on ``<path>/.nf-run.lock``: the kernel releases it when its
    holder exits, however it dies (a SIGKILLed run never leaves a stale lock), so no
    stale-lock rule is needed. The file records the holder's pid, host and start time, which
    a refused second run reports. The file is never deleted (deleting a flock'd file lets a
    third process lock a new file while the second still holds the old one).

    ``flock`` is reliable on local disks; on NFS it depends on the server (Linux clients map it
    to POSIX locks), and object stores have no locks at all — see docs/io.md.

    Raises
    ------
    DirectoryLockedError
        Another process holds the lock.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with directory_lock(d):  # doctest: +IGNORE_EXCEPTION_DETAIL
    ...     with directory_lock(d):
    ...         pass
    Traceback (most recent call last):
    DirectoryLockedError: ... is in use by another nemo_frames run (pid ...)
    """
    import datetime
    import fcntl
    import socket

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
            except ValueError:
                holder = {}
            who = (
                f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
                if holder else "its details are not written yet"
            )
            raise DirectoryLockedError(
                f"{what}: {path} is in use by another nemo_frames run ({who}; lock file {lock_path}). "
                "Wait for that run to finish (or stop it), or use another output directory."
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        data = json.dumps(info).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        yield info
    finally:
        os.close(fd)  # closing the descriptor releases the flock
