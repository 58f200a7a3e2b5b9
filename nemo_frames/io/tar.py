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

import contextlib
import dataclasses
import gc
import struct
import tarfile
import zlib
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


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a scan builds its rows.

    A scan makes a few dicts, strings and ints per member and no reference cycles, yet the
    allocations trigger collections, now and then of the whole heap (~13 % of a scan's time here; more
    in a worker holding a large heap). Reference counting still frees everything as usual.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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


def _skip(f: BinaryIO, n: int) -> int:
    """Read ``n`` bytes forward and drop them; return how many were actually available."""
    if n <= 0:
        return 0
    got = 0
    while got < n:
        b = f.read(min(1 << 20, n - got))
        if not b:
            break
        got += len(b)
    return got


_POSIX_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
# name, size, checksum, type flag, magic: the fields of a ustar header that a scan needs.
_HEADER = struct.Struct("100s24x12s12x8s1s100x8s")


def _fast_header(header: bytes) -> tuple[str, int] | None:
    """``(name, size)`` of a plain regular-file header, or None to let ``tarfile`` parse it.

    ``TarInfo.frombuf`` costs ~30 µs a header (it decodes all 17 fields through Python helpers);
    the scan needs two of them. This takes the common case only — a ustar / GNU regular file
    whose octal size and unsigned checksum are valid — and gives everything else (links,
    extended headers, base-256 or negative numbers, signed checksums, bad headers) to
    ``frombuf``, so those keep ``tarfile``'s exact behaviour and errors.
    """
    name, size_field, chk, typeflag, magic = _HEADER.unpack_from(header)
    if (typeflag != b"0" and typeflag != b"\x00") or (magic != _POSIX_MAGIC and magic != _GNU_MAGIC):
        return None
    try:
        # int() skips surrounding whitespace itself, as tarfile's nti() relies on too.
        stored = int(chk.partition(b"\x00")[0] or b"0", 8)
        size = int(size_field.partition(b"\x00")[0] or b"0", 8)
    except ValueError:
        return None
    if size < 0:
        return None
    # The checksum is the byte sum with its own 8-byte field counted as spaces (8 * 0x20 = 256).
    # Adler-32's low half is 1 + that byte sum mod 65521, in C: sum() over 512 bytes costs more
    # than the rest of this function. A header whose sum is off by a multiple of 65521 (and still
    # has the magic and two valid octal fields) is the only one that passes here and not in tarfile.
    if zlib.adler32(header) & 0xFFFF != (stored - 256 + sum(chk) + 1) % 65521:
        return None
    name = name.partition(b"\x00")[0]
    if magic == _POSIX_MAGIC and header[345] != 0:
        name = header[345:500].partition(b"\x00")[0] + b"/" + name
    if name.endswith(b"/"):
        return None  # tarfile makes an AREGTYPE name ending in "/" a directory
    return name.decode("utf-8", "surrogateescape"), size


_WINDOW = 256 << 10
_SMALL_WINDOW = 16 << 10


class _Window:
    """Sequential reads and skips over a tar stream through a read-ahead window.

    A scan of a shard of small images makes four file calls a member through a file object
    (read the header, tell, seek, and the buffer refill); here a member whose header is inside
    the window costs a slice, and a skip is arithmetic. After a skip far past the window (big
    members) the next fill is small, so a scan still reads headers, not pixels. A stream that
    cannot seek is read exactly as asked, with no read-ahead.
    """

    __slots__ = ("base", "buf", "end", "f", "pos", "seekable")

    def __init__(self, f: BinaryIO, seekable: bool, pos: int, end: int | None) -> None:
        self.f = f
        self.seekable = seekable
        self.pos = pos  # logical position of the next read
        self.base = pos  # file position of buf[0]; the file object is at base + len(buf)
        self.buf = b""
        self.end = end

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes at the position (fewer only at the end of the stream)."""
        i = self.pos - self.base
        buf = self.buf
        if i >= 0 and i + n <= len(buf):
            self.pos += n
            return buf[i : i + n]
        head = buf[i:] if 0 <= i < len(buf) else b""
        start = self.pos + len(head)
        fend = self.base + len(buf)
        gap = start - fend
        if gap > 0:
            if self.seekable:
                self.f.seek(start)
            elif _skip(self.f, gap) < gap:
                self.buf, self.base = b"", fend
                return head
        need = n - len(head)
        if self.seekable and need < _WINDOW:
            need = _SMALL_WINDOW if gap > _WINDOW else _WINDOW
        # A stream (a decompressing one) is read no further than asked: a read error past the
        # member being read must not take the members before it down too.
        data = _read_exact(self.f, need)
        self.buf = buf = head + data if head else data
        self.base = self.pos
        out = buf[:n]
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        """Move ``n`` bytes ahead; return how many of them the stream has."""
        if n <= 0:
            return 0
        if self.seekable:
            have = n if self.end is None else max(0, min(n, self.end - self.pos))
            self.pos += have
            return have
        fend = self.base + len(self.buf)
        if self.pos + n <= fend:
            self.pos += n
            return n
        in_window = max(0, fend - self.pos)
        got = _skip(self.f, n - in_window)
        self.buf, self.base = b"", fend + got
        self.pos = self.base
        return in_window + got


def _member_data(w: _Window, name: str, size: int, padded: int, data_offset: int, wanted: bool) -> bytes | None:
    """Read a wanted member's data, or skip it; either way, a cut inside it raises ``TarTruncated``."""
    if wanted:
        raw = w.read(padded)
        if len(raw) >= size:
            return raw[:size]
        got = len(raw)
    else:
        got = w.skip(padded)
        if got >= size:
            return None
    raise TarTruncated(
        f"archive ends at byte {data_offset + got} inside member {name!r} ({got} of {size} bytes)",
        offset=data_offset,
        member=name,
    )


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
    end: int | None = None
    if seekable:
        end = f.seek(0, 2)
        f.seek(pos)
    w = _Window(f, seekable, pos, end)
    pending_name: str | None = None
    pending_size: int | None = None
    pending_error: str | None = None
    member_start: int | None = None
    first = True
    # After a header with an impossible size, the next header's position is unknown: like GNU tar,
    # try each following block until one is a valid header (or the end-of-archive marker).
    resync = False
    while True:
        header = w.read(BLOCK)
        if len(header) < BLOCK:
            if first and len(header) == 0:
                raise TarTruncated("file is empty (0 bytes); a valid empty tar has 1024 zero bytes", offset=pos)
            raise TarTruncated(
                f"archive ends at byte {pos + len(header)} inside a header, without the end-of-archive marker",
                offset=pos,
            )
        if header == b"\0" * BLOCK:
            second = w.read(BLOCK)
            if second == b"\0" * BLOCK:
                return
            if len(second) < BLOCK:
                raise TarTruncated(
                    f"archive ends at byte {pos + BLOCK + len(second)} after one zero block; "
                    "the end-of-archive marker needs two",
                    offset=pos,
                )
            raise TarCorrupt(f"zero block at byte {pos} followed by data", offset=pos)
        fast = _fast_header(header)
        if fast is None:
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                if first:
                    raise NotATar(f"not a tar archive: invalid header at byte {pos} ({exc})") from None
                if resync:
                    pos += BLOCK
                    continue
                raise TarCorrupt(f"invalid tar header at byte {pos} ({exc})", offset=pos) from None
        first = resync = False
        if member_start is None:
            member_start = pos
        data_offset = pos + BLOCK
        kind: MemberKind
        if fast is not None:
            name = fast[0] if pending_name is None else pending_name
            size = fast[1] if pending_size is None else pending_size
            kind = "file"
        else:
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
            ttype = info.type

            if ttype in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
                ext_size = info.size
                if ext_size > max_read_size:
                    raise TarCorrupt(f"extended header of {ext_size} bytes at byte {pos} exceeds the cap", offset=pos)
                data = w.read((ext_size + BLOCK - 1) // BLOCK * BLOCK)
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
                    ext_block = w.read(BLOCK)
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
                kind = "file"
            elif ttype == tarfile.DIRTYPE:
                kind = "dir"
            elif ttype in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                kind = "link"
            else:
                kind = "special"
            if kind in ("dir", "link"):
                # Links carry no data (their size field is meaningless); directories have none.
                size = 0
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        wanted = kind == "file" and want is not None and size <= max_read_size and want(name, size)
        data_bytes = _member_data(w, name, size, padded, data_offset, wanted)
        if pending_error is not None:
            yield TarMember(name, member_start, data_offset, size, "special", None, pending_error)
            resync = True
        else:
            yield TarMember(name, member_start, data_offset, size, kind, data_bytes)
        pos = data_offset + padded
        pending_name = pending_size = pending_error = None
        member_start = None
