"""Expanding shard URLs: local paths, globs, brace ranges and any fsspec URL."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from braceexpand import braceexpand
from fsspec.core import url_to_fs


@dataclass(frozen=True, slots=True)
class Shard:
    """One input shard: its URL (as reported in the ``source`` column) and size in bytes."""

    url: str
    size: int


class NoShardsFound(FileNotFoundError):
    """No file matched the given URLs."""


class NotRegularFile(OSError):
    """A local shard path names a FIFO, device, socket or other non-regular file (recorded ``shard_unreadable``)."""


_KINDS = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISDIR, "directory"),
)


def _not_regular(path: str, mode: int) -> NotRegularFile:
    kind = next((name for test, name in _KINDS if test(mode)), f"special file (mode {oct(mode)})")
    return NotRegularFile(
        f"{path} is a {kind}, not a regular file; shards are read only from regular files (a pipe or device "
        "could block the run forever or never end). Copy the data to a file and point input.urls at it"
    )


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def open_shard(url: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """Open a shard for binary reading; a local path must be a regular file (else :class:`NotRegularFile`).

    A FIFO opened for reading blocks until a writer appears, and a device such as ``/dev/zero`` never
    ends, so a local path is opened non-blocking, checked with ``fstat`` on the open descriptor (no race
    between the check and the open), and only then read. Remote URLs open through fsspec as before.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.tar"); _ = open(p, "wb").write(b"x")
    >>> with open_shard(p) as f: f.read()
    b'x'
    >>> os.mkfifo(os.path.join(d, "pipe.tar"))
    >>> open_shard(os.path.join(d, "pipe.tar"))
    Traceback (most recent call last):
    ...
    nemo_frames.io.urls.NotRegularFile: ... is a FIFO (named pipe), not a regular file; ...
    """
    fs, path = url_to_fs(url, **(storage_options or {}))
    if not _is_local(fs):
        return fsspec.open(url, "rb", **(storage_options or {})).open()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        # A socket cannot be opened at all (ENXIO); name what it is rather than the errno.
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    if _is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def expand_urls(
    urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    storage_options: dict[str, Any] | None = None,
    suffixes: Iterable[str] | None = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tzst"),
) -> list[Shard]:
    """Expand brace ranges and globs, list directories, and return the shards in a stable order.

    Parameters
    ----------
    urls : str, path or list of them
        ``"data/{00000..00099}.tar"``, ``"s3://bucket/shards/*.tar"``, a directory, or a list.
    storage_options : dict, optional
        Passed to fsspec for remote URLs.
    suffixes : iterable of str, optional
        When a directory is given, the file suffixes to pick from it (None: every file). Default:
        plain and compressed tars (``nemo_frames.io.compressed.TAR_SUFFIXES``).

    Returns
    -------
    list of Shard
        In the order given; within one glob or directory, sorted by URL. Duplicates removed.

    Raises
    ------
    NoShardsFound
        Nothing matched; the message lists what was tried.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3): _ = (d / f"{i:05d}.tar").write_bytes(b"")
    >>> [pathlib.Path(s.url).name for s in expand_urls(str(d / "{00000..00001}.tar"))]
    ['00000.tar', '00001.tar']
    """
    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    storage_options = storage_options or {}
    out: list[Shard] = []
    seen: set[str] = set()
    tried: list[str] = []
    for raw in urls:
        for url in braceexpand(os.fspath(raw)):
            tried.append(url)
            fs, path = url_to_fs(url, **storage_options)
            if _has_magic(path):
                infos = sorted(fs.glob(path, detail=True).items())
                found = [(p, i) for p, i in infos if i.get("type") == "file"]
            elif fs.isdir(path):
                found = [
                    (p, i)
                    for p, i in sorted(fs.find(path, detail=True).items())
                    if i.get("type") == "file" and (suffixes is None or p.endswith(tuple(suffixes)))
                ]
            elif fs.exists(path):
                found = [(path, fs.info(path))]
            else:
                found = []
            for p, info in found:
                full = _full_url(fs, p)
                if full not in seen:
                    seen.add(full)
                    out.append(Shard(full, int(info.get("size") or 0)))
    if not out:
        shown = ", ".join(tried[:5]) + (f", … ({len(tried)} in all)" if len(tried) > 5 else "")
        raise NoShardsFound(
            f"read_webdataset: no shard matched {shown}. Check the path (brace ranges like "
            "'{00000..00099}', globs like '*.tar', or a directory), and for remote URLs the "
            "storage_options (credentials, endpoint)."
        )
    return out


def group_shards(shards: Sequence[Shard], *, partition_bytes: int | None) -> list[list[Shard]]:
    """One group per shard, or consecutive small shards packed up to ``partition_bytes``."""
    if not partition_bytes:
        return [[s] for s in shards]
    groups: list[list[Shard]] = []
    cur: list[Shard] = []
    size = 0
    for s in shards:
        if cur and size + s.size > partition_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += s.size
    if cur:
        groups.append(cur)
    return groups
