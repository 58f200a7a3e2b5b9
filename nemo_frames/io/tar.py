"""A safe, streaming reader of tar headers.

Why not ``tarfile`` directly: its streaming mode silently returns fewer members
for a tar cut inside a member header, and its extraction helpers are not needed
(we never extract). We reuse ``tarfile.TarInfo.frombuf`` to parse and checksum
each 512-byte header, and add what a data pipeline needs on top:

* the end-of-archive marker (two zero blocks) is verified, so truncation is
  always reported, never silent;
* member sizes are checked against caps before anything is allocated;
* only the members the caller asks for are read (sidecars); image data is
  skipped with a seek, so a scan reads headers, not pixels;
* GNU long names and PAX ``path`` / ``size`` records are honoured;
* links, devices and directories are reported as such, never followed;
* a header with an impossible size (negative in base-256, or a PAX ``size`` that is not a
  non-negative integer) is reported on its member (``TarMember.error``) and skipped the way
  GNU tar does ("Skipping to next header"): blocks are read one by one until the next valid
  header, so the members after it keep their true offsets;
* old-GNU sparse members (type ``S``) have their extension blocks skipped, so the members after
  them stay readable (the sparse member itself is reported as ``special``).
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO, Literal

BLOCK = 512

MemberKind = Literal["file", "dir", "link", "special"]


@dataclasses.dataclass(frozen=True, slots=True)
class TarMember:
    """One tar member as found in the archive.

    Attributes
    ----------
    name : str
        Member path as stored (after GNU long-name / PAX resolution).
    offset : int
        Byte offset of the member's header (the first of its extended headers, if any).
    data_offset : int
        Byte offset of the member's data.
    size : int
        Size of the member's data in bytes.
    kind : {"file", "dir", "link", "special"}
        Regular file, directory, (sym/hard) link, or anything else (device, fifo, sparse).
    data : bytes or None
        The member's data when the caller asked for it (see ``want``), else None.
    error : str or None
        Why the member's header is unusable (e.g. a negative size); such a member has ``size``
        0 and kind ``special``, and the reader has skipped to the next valid header.
    """

    name: str
    offset: int
    data_offset: int
    size: int
    kind: MemberKind
    data: bytes | None = None
    error: str | None = None


class TarTruncated(Exception):
    """The archive ends before its end-of-archive marker.

    ``offset`` is where reading stopped; ``member`` is the member that was cut, if
    the cut is inside a member's data.
    """

    def __init__(self, message: str, *, offset: int, member: str | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.member = member


class NotATar(Exception):
    """The first header is not a valid tar header."""


class TarCorrupt(Exception):
    """A header after the first one is invalid (bad checksum / garbage)."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    left = n
    while left > 0:
        b = f.read(left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _skip(f: BinaryIO, n: int, seekable: bool) -> int:
    """Skip ``n`` bytes; return how many were actually available."""
    if n <= 0:
        return 0
    if seekable:
        pos = f.tell()
        # Never seek past the end: a forged size (up to 2**95 in base-256) makes seek raise EINVAL, and
        # past-EOF seeks succeed silently anyway. Clamp to the end and report how much was there.
        end = f.seek(0, 2)
        f.seek(min(pos + n, end))
        return min(n, end - pos)
    got = 0
    while got < n:
        b = f.read(min(1 << 20, n - got))
        if not b:
            break
        got += len(b)
    return got


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            break
        if length <= 0:
            break
        rec = data[sp + 1 : pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_members(
    f: BinaryIO,
    *,
    want: Callable[[str, int], bool] | None = None,
    max_read_size: int = 16 << 20,
    seekable: bool | None = None,
) -> Iterator[TarMember]:
    """Yield the members of a tar stream, verifying the end-of-archive marker.

    Parameters
    ----------
    f : binary file object
        Positioned at the start of the archive.
    want : callable(name, size) -> bool, optional
        Which regular members to read into ``TarMember.data``. Others are skipped.
    max_read_size : int
        A wanted member larger than this is not read (``data`` stays None); the
        caller records it as too large. Extended headers larger than this raise.
    seekable : bool, optional
        Skip data with ``seek`` (default: ``f.seekable()``).

    Raises
    ------
    NotATar
        The stream does not start with a valid tar header.
    TarTruncated
        The stream ends before the two zero blocks that close a tar archive.
    TarCorrupt
        A later header is invalid.

    Examples
    --------
    >>> import io, tarfile
    >>> buf = io.BytesIO()
    >>> with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
    ...     ti = tarfile.TarInfo("a.txt"); ti.size = 2; t.addfile(ti, io.BytesIO(b"hi"))
    >>> _ = buf.seek(0)
    >>> [(m.name, m.data_offset, m.data) for m in iter_members(buf, want=lambda n, s: True)]
    [('a.txt', 512, b'hi')]
    """
    if seekable is None:
        try:
            seekable = bool(f.seekable())
        except Exception:
            seekable = False
    pos = f.tell() if seekable else 0
    pending_name: str | None = None
    pending_size: int | None = None
    pending_error: str | None = None
    member_start: int | None = None
    first = True
    # After a header with an impossible size, the next header's position is unknown: like GNU tar,
    # try each following block until one is a valid header (or the end-of-archive marker).
    resync = False
    while True:
        header = _read_exact(f, BLOCK)
        if len(header) < BLOCK:
            if first and len(header) == 0:
                raise TarTruncated("file is empty (0 bytes); a valid empty tar has 1024 zero bytes", offset=pos)
            raise TarTruncated(
                f"archive ends at byte {pos + len(header)} inside a header, without the end-of-archive marker",
                offset=pos,
            )
        if header == b"\0" * BLOCK:
            second = _read_exact(f, BLOCK)
            if second == b"\0" * BLOCK:
                return
            if len(second) < BLOCK:
                raise TarTruncated(
                    f"archive ends at byte {pos + BLOCK + len(second)} after one zero block; "
                    "the end-of-archive marker needs two",
                    offset=pos,
                )
            raise TarCorrupt(f"zero block at byte {pos} followed by data", offset=pos)
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            if first:
                raise NotATar(f"not a tar archive: invalid header at byte {pos} ({exc})") from None
            if resync:
                pos += BLOCK
                continue
            raise TarCorrupt(f"invalid tar header at byte {pos} ({exc})", offset=pos) from None
        first = False
        resync = False
        if member_start is None:
            member_start = pos
        data_offset = pos + BLOCK
        if info.size < 0:
            # Base-256 lets a header say -1024; seeking by it would move every later locator.
            name = pending_name if pending_name is not None else info.name
            yield TarMember(name, member_start, data_offset, 0, "special", None,
                            f"tar header at byte {pos} gives a negative size ({info.size}); "
                            "skipped to the next valid header, as GNU tar does")
            pos = data_offset
            pending_name = pending_size = pending_error = None
            member_start = None
            resync = True
            continue
        size = info.size if pending_size is None else pending_size
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        ttype = info.type

        if ttype in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
            ext_size = info.size
            if ext_size > max_read_size:
                raise TarCorrupt(f"extended header of {ext_size} bytes at byte {pos} exceeds the cap", offset=pos)
            data = _read_exact(f, (ext_size + BLOCK - 1) // BLOCK * BLOCK)
            if len(data) < ext_size:
                raise TarTruncated(
                    f"archive ends at byte {data_offset + len(data)} inside an extended header", offset=data_offset
                )
            data = data[:ext_size]
            if ttype == tarfile.GNUTYPE_LONGNAME:
                pending_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif ttype == tarfile.XHDTYPE:
                pax = _parse_pax(data)
                if "path" in pax:
                    pending_name = pax["path"]
                if "size" in pax:
                    raw_size = pax["size"].strip()
                    if raw_size.isdigit():  # digits only: no sign, no spaces inside (GNU tar's rule)
                        pending_size = int(raw_size)
                    else:
                        # GNU tar ignores such a record and uses the ustar header's size.
                        pending_error = (
                            f"PAX header at byte {pos} gives size={pax['size'][:40]!r}, not a non-negative "
                            "integer; ignored it (GNU tar does too) and skipped to the next valid header"
                        )
            pos = data_offset + (ext_size + BLOCK - 1) // BLOCK * BLOCK
            continue

        if ttype == tarfile.GNUTYPE_SPARSE and header[482]:
            # Old-GNU sparse: more sparse-map blocks follow the header (each flags whether another
            # follows at byte 504) before the member's data.
            while True:
                ext_block = _read_exact(f, BLOCK)
                if len(ext_block) < BLOCK:
                    raise TarTruncated(
                        f"archive ends at byte {data_offset + len(ext_block)} inside a sparse header",
                        offset=data_offset,
                    )
                data_offset += BLOCK
                if not ext_block[504]:
                    break

        name = pending_name if pending_name is not None else info.name
        if ttype in tarfile.REGULAR_TYPES and ttype != tarfile.GNUTYPE_SPARSE:
            kind: MemberKind = "file"
        elif ttype == tarfile.DIRTYPE:
            kind = "dir"
        elif ttype in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            kind = "link"
        else:
            kind = "special"
        if kind in ("dir", "link"):
            # Links carry no data (their size field is meaningless); directories have none.
            size = padded = 0
        data_bytes: bytes | None = None
        if kind == "file" and want is not None and size <= max_read_size and want(name, size):
            raw = _read_exact(f, padded)
            if len(raw) < size:
                raise TarTruncated(
                    f"archive ends at byte {data_offset + len(raw)} inside member {name!r} "
                    f"({len(raw)} of {size} bytes)",
                    offset=data_offset,
                    member=name,
                )
            data_bytes = raw[:size]
        else:
            got = _skip(f, padded, seekable)
            if got < size:
                raise TarTruncated(
                    f"archive ends at byte {data_offset + got} inside member {name!r} ({got} of {size} bytes)",
                    offset=data_offset,
                    member=name,
                )
        if pending_error is not None:
            yield TarMember(name, member_start, data_offset, size, "special", None, pending_error)
            resync = True
        else:
            yield TarMember(name, member_start, data_offset, size, kind, data_bytes)
        pos = data_offset + padded
        pending_name = pending_size = pending_error = None
        member_start = None
