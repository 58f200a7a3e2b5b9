"""The commit protocol: deterministic names, atomic publish, done markers, resume (DESIGN §7).

A *unit* of output (one output shard: its ``.tar``, ``.parquet``, ``.idx`` and
``.stats.json``) is published in three steps:

1. every file is written to a temporary name **in the destination directory**
   (``.{file}.tmp-{uuid}``), flushed and fsynced, then renamed over the final name
   (local / POSIX: ``os.replace`` is atomic within one directory). On object stores
   (S3, GCS, ...) there is no rename: each file is written to a local temporary file
   and uploaded with ``fs.put_file``, and an object becomes visible only when its
   upload completes, so an exception or a kill mid-write publishes nothing;
2. a done marker ``_done/{unit}.json`` is created **exclusively** (local: a hard
   link of a fully written temporary file, which fails if the marker exists; S3:
   a conditional ``PUT`` with ``If-None-Match: *``). It records the file sizes,
   sha256 checksums, counts and the config hash;
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
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

FileContent = bytes | Callable[[IO[bytes]], Any]
"""The content of one output file: bytes, or a function that writes to a binary file object."""

CONFIG_FILE = "_config.json"
DONE_DIR = "_done"
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


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


class _HashingWriter:
    """A binary file wrapper that counts and hashes what goes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True


def _write_content(f: IO[bytes], content: FileContent) -> tuple[int, str]:
    w = _HashingWriter(f)
    if isinstance(content, bytes | bytearray | memoryview):
        w.write(bytes(content))
    elif callable(content):
        content(w)  # type: ignore[arg-type]
    else:
        raise TypeError(f"file content must be bytes or a callable writing to a file object, found {type(content).__name__}")
    return w.size, w.sha256.hexdigest()


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
    ) -> None:
        self.storage_options = dict(storage_options or {})
        self.fs, path = fsspec.core.url_to_fs(str(root), **self.storage_options)
        self.root = path.rstrip("/") if path not in ("/", "") else path
        self.url = str(root).rstrip("/")
        self.stage = stage
        self.config = json.loads(canonical_json(dict(config)))
        self.config_hash = config_hash(self.config)
        self.local = is_local(self.fs)
        self.run_files = tuple(run_files)
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
        problems = []
        for fname, meta in m.get("files", {}).items():
            try:
                data = self._cat(self.path(fname))
            except FileNotFoundError:
                problems.append(f"{fname}: missing")
                continue
            if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                problems.append(f"{fname}: size/sha256 differ from the marker")
        return problems

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` only if it does not exist; True if we created it."""
        if self.local:
            d = os.path.dirname(path)
            tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
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

    # ------------------------------------------------------------------ write
    def publish(self, filename: str, content: FileContent) -> tuple[int, str]:
        """Atomically write one file under the root (replacing any old one); return (size, sha256).

        No marker is written: use it for run-level files such as ``stats.json``.
        """
        self._check_name(filename)
        final = self.path(filename)
        if self.local:
            tmp = self.path(f".{filename}.tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    size, digest = _write_content(f, content)
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
                size, digest = _write_content(f, content)
            # An object becomes visible only when its upload completes (single PUT or completed multipart).
            self.fs.put_file(local, final)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            self._invalidate(final)
        return size, digest

    def _stage_local(
        self, files: Mapping[str, FileContent], tmpdir: str | None, staged: dict[str, tuple[str, int, str]]
    ) -> None:
        # Fills ``staged`` as it goes so the caller can remove partial temporaries on an exception.
        for fname, content in files.items():
            self._check_name(fname)
            if self.local:
                tmp = self.path(f".{fname}.tmp-{uuid.uuid4().hex}")
            else:
                assert tmpdir is not None
                tmp = os.path.join(tmpdir, fname)
            staged[fname] = (tmp, 0, "")
            with open(tmp, "wb") as f:
                size, digest = _write_content(f, content)
                f.flush()
                if self.local:
                    os.fsync(f.fileno())
            staged[fname] = (tmp, size, digest)

    def write(
        self,
        name: str,
        files: Mapping[str, FileContent],
        *,
        counts: Mapping[str, Any] | None = None,
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
        try:
            self._stage_local(files, tmpdir, staged)
            if self.done(name):
                # Someone finished first while we were writing: discard our copy, publish nothing.
                return CommitResult(name, False, self.marker(name) or {})
            for fname, (tmp, _, _) in staged.items():
                if self.local:
                    os.replace(tmp, self.path(fname))
                else:
                    self.fs.put_file(tmp, self.path(fname))
                    self._invalidate(self.path(fname))
            if self.local:
                _fsync_dir(self.root)
            marker = {
                "name": name,
                "stage": self.stage,
                "config_hash": self.config_hash,
                "files": {f: {"size": s, "sha256": h} for f, (_, s, h) in staged.items()},
                "counts": dict(counts or {}),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "writer": f"{os.uname().nodename}:{os.getpid()}",
            }
            data = (json.dumps(marker, sort_keys=True, indent=2, default=str) + "\n").encode("utf-8")
            if self._create_exclusive(self.marker_path(name), data):
                return CommitResult(name, True, marker)
            winner = self.marker(name) or {}
            mine = marker["files"]
            theirs = winner.get("files", {})
            if any(theirs.get(f, {}).get("sha256") != v["sha256"] for f, v in mine.items()):
                raise NonDeterministicOutputError(
                    f"commit: unit {name!r} under {self.url} was committed by another writer "
                    f"({winner.get('writer')}) with different bytes than this writer produced; outputs must be "
                    "deterministic for resume to be safe. Check for unordered iteration or timestamps in the "
                    "output, then rerun with overwrite=True."
                )
            return CommitResult(name, False, winner)
        finally:
            if self.local:
                for tmp, _, _ in staged.values():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
