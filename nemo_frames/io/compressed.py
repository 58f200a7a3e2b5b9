"""Compressed shards (``.tar.gz`` / ``.tgz`` / ``.tar.zst``): a streaming, capped decompressor.

A compressed shard cannot be read by byte range: there is no way to seek to a member
without decompressing everything before it. So:

* the scan streams the shard once through :func:`open_decompressed` and reads the tar
  headers from the decompressed stream (``nemo_frames.io.tar.iter_members`` with
  ``seekable=False``). Locators (``image_offset``, ``nf_members``) are offsets in the
  **decompressed** tar, the same numbers ``tar xzf`` / ``zstd -d`` would give;
* a later pass that needs member bytes (score, export, report thumbnails) calls
  :func:`read_ranges_compressed` (``nemo_frames.io.fetch.read_ranges`` does it for any
  compressed URL): one sequential decompression of the shard up to the last range asked
  for, keeping only the ranges asked for. Memory is the bytes asked for, as with a plain
  shard, never the whole decompressed shard.

Decompression bombs are stopped while streaming, before anything is allocated for them:

* ``max_total`` (default 64 GiB): decompressed bytes of one shard;
* ``max_ratio`` (default 200): decompressed ÷ compressed bytes read so far, checked once
  more than ``ratio_floor`` (64 MiB) has come out. Image and text tars compress 1–10×; a
  stream of zeros compresses over 1000×.

Either limit raises :class:`DecompressionLimit`, recorded as ``decompression_bomb``. A stream
that ends before its compression end marker (or fails its checksum) raises
:class:`~nemo_frames.io.tar.TarTruncated`, recorded as ``shard_truncated``.

gzip is Python's ``gzip``; zstd is pyarrow's codec (``pyarrow.CompressedInputStream``), so no
extra dependency is needed.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from nemo_frames.io.tar import TarTruncated

GZIP_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz")
ZSTD_SUFFIXES: tuple[str, ...] = (".tar.zst", ".tar.zstd", ".tzst")
COMPRESSED_SUFFIXES: tuple[str, ...] = GZIP_SUFFIXES + ZSTD_SUFFIXES
TAR_SUFFIXES: tuple[str, ...] = (".tar", *COMPRESSED_SUFFIXES)

MAX_TOTAL = 64 << 30
MAX_RATIO = 200.0
RATIO_FLOOR = 64 << 20


class DecompressionLimit(Exception):
    """A compressed shard decompresses past ``max_total`` bytes or ``max_ratio`` (a decompression bomb)."""


def compression_of(url: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (a plain tar), from the URL's suffix.

    Examples
    --------
    >>> compression_of("s3://b/00001.tar.gz"), compression_of("x.tzst"), compression_of("x.tar")
    ('gzip', 'zstd', None)
    """
    low = url.lower().split("?", 1)[0]
    if low.endswith(GZIP_SUFFIXES):
        return "gzip"
    if low.endswith(ZSTD_SUFFIXES):
        return "zstd"
    return None


def is_compressed(url: str) -> bool:
    """Whether ``url`` names a compressed tar (read by streaming, never by byte range)."""
    return compression_of(url) is not None


class _Counting:
    """The raw (compressed) file, counting the bytes read from it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.n = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.n += len(b)
        return b

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class CappedStream:
    """A forward-only decompressed stream with bomb caps (see the module docstring).

    ``read(n)`` returns up to ``n`` bytes (fewer only at the end); ``tell()`` is the
    decompressed position. Errors of the codec become :class:`TarTruncated` (stream cut or
    corrupt) or :class:`DecompressionLimit` (a cap reached).
    """

    def __init__(
        self,
        raw: BinaryIO,
        codec: str,
        *,
        url: str = "",
        max_total: int = MAX_TOTAL,
        max_ratio: float = MAX_RATIO,
        ratio_floor: int = RATIO_FLOOR,
    ) -> None:
        self.url = url
        self.codec = codec
        self.raw = _Counting(raw)
        self.max_total = int(max_total)
        self.max_ratio = float(max_ratio)
        self.ratio_floor = int(ratio_floor)
        self.pos = 0
        if codec == "gzip":
            self._inner: Any = gzip.GzipFile(fileobj=self.raw, mode="rb")  # type: ignore[arg-type]
        elif codec == "zstd":
            import pyarrow as pa

            self._inner = pa.CompressedInputStream(pa.PythonFile(self.raw, mode="r"), "zstd")
        else:
            raise ValueError(f"compressed shard {url}: unknown codec {codec!r}; expected gzip or zstd")

    # file protocol for iter_members
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        # Never decompress more than the caps allow, even within one read.
        n = min(n, self.max_total - self.pos + 1)
        try:
            b = self._inner.read(n)
        except EOFError as exc:  # gzip: stream cut before its end marker
            raise TarTruncated(
                f"compressed ({self.codec}) stream ends at decompressed byte {self.pos} before its end marker "
                f"({exc}); the .{self.codec} file is truncated",
                offset=self.pos,
            ) from None
        except (OSError, zlib.error) as exc:  # gzip CRC / bad data; pyarrow: truncated or corrupt zstd
            raise TarTruncated(
                f"compressed ({self.codec}) stream is cut or corrupt at decompressed byte {self.pos} ({exc})",
                offset=self.pos,
            ) from None
        b = bytes(b)
        self.pos += len(b)
        if self.pos > self.max_total:
            raise DecompressionLimit(
                f"{self.url}: decompresses past max_decompressed={self.max_total} bytes "
                f"(after {self.raw.n} compressed bytes); a decompression bomb or a shard too large for one "
                "partition: split it, or raise the cap"
            )
        if self.pos > self.ratio_floor and self.pos > self.max_ratio * max(self.raw.n, 1):
            raise DecompressionLimit(
                f"{self.url}: compression ratio over max_ratio={self.max_ratio:g} "
                f"({self.pos} bytes out of {self.raw.n} compressed); a decompression bomb? raise the cap if the "
                "data is really this compressible"
            )
        return b

    def drain(self) -> None:
        """Read to the end, so a cut or corrupt compression trailer is reported (tar stops reading earlier)."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._inner.close()


@contextlib.contextmanager
def open_decompressed(
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    max_total: int = MAX_TOTAL,
    max_ratio: float = MAX_RATIO,
    ratio_floor: int = RATIO_FLOOR,
) -> Iterator[CappedStream]:
    """Open a compressed shard (local or any fsspec URL) as a capped, forward-only decompressed stream.

    Examples
    --------
    >>> import gzip, io, os, tarfile, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.tar.gz")
    >>> with tarfile.open(p, "w:gz") as t:
    ...     ti = tarfile.TarInfo("k.txt"); ti.size = 2; t.addfile(ti, io.BytesIO(b"hi"))
    >>> from nemo_frames.io.tar import iter_members
    >>> with open_decompressed(p) as f:
    ...     [(m.name, m.data) for m in iter_members(f, want=lambda n, s: True)]
    [('k.txt', b'hi')]
    """
    codec = compression_of(url)
    if codec is None:
        raise ValueError(f"{url}: not a compressed tar (expected one of {list(COMPRESSED_SUFFIXES)})")
    with _open_raw(url, storage_options) as raw:
        stream = CappedStream(raw, codec, url=url, max_total=max_total, max_ratio=max_ratio, ratio_floor=ratio_floor)
        try:
            yield stream
        finally:
            stream.close()


def _open_raw(url: str, storage_options: dict[str, Any] | None) -> Any:
    # A local path must be a regular file: a FIFO or a device would hang the scan (io.urls.open_shard).
    from nemo_frames.io.urls import open_shard as open_regular

    return open_regular(url, storage_options)


@contextlib.contextmanager
def open_shard(
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    max_total: int = MAX_TOTAL,
    max_ratio: float = MAX_RATIO,
) -> Iterator[Any]:
    """Open any shard for a header scan: a plain tar as a seekable file, a compressed one decompressed.

    Pair with :func:`finish` after the tar's end-of-archive marker, so a compressed stream is
    read to its end and a cut trailer is reported.
    """
    if compression_of(url) is None:
        with _open_raw(url, storage_options) as f:
            yield f
    else:
        with open_decompressed(url, storage_options=storage_options, max_total=max_total, max_ratio=max_ratio) as f:
            yield f


def finish(f: Any) -> None:
    """After a full tar scan: read a compressed stream to its end (checksum and end marker); no-op for plain files."""
    if isinstance(f, CappedStream):
        f.drain()


def _skip(f: CappedStream, n: int) -> int:
    from nemo_frames.io.tar import _skip as skip_forward

    return skip_forward(f, n)  # a decompressing stream cannot seek: read forward


def read_ranges_compressed(
    url: str,
    ranges: Sequence[tuple[int, int]],
    *,
    storage_options: dict[str, Any] | None = None,
    views: bool = False,
) -> list[bytes] | list[memoryview]:
    """Read ``(offset, size)`` ranges of the **decompressed** stream of a compressed shard, in one pass.

    Decompresses from the start up to the end of the last range; keeps only the ranges.

    Raises
    ------
    OSError
        The stream ends before a range (truncated shard, or it changed since the scan), or
        a cap is reached; the message names the shard and the offset.
    """
    from nemo_frames.io.fetch import coalesce

    out: list[Any] = [None] * len(ranges)
    if not ranges:
        return []
    try:
        with open_decompressed(url, storage_options=storage_options) as f:
            for start, end, idx in coalesce(ranges, max_gap=1 << 16):
                need = start - f.tell()
                if need > 0 and _skip(f, need) < need:
                    raise OSError(f"{url}: decompressed stream ends before offset {start}")
                buf = bytearray()
                while len(buf) < end - start:
                    b = f.read(end - start - len(buf))
                    if not b:
                        break
                    buf += b
                if len(buf) < end - start:
                    raise OSError(
                        f"{url}: expected {end - start} decompressed bytes at offset {start}, found {len(buf)}; "
                        "the shard changed or was truncated after the scan — scan it again"
                    )
                src = memoryview(bytes(buf)) if views else bytes(buf)
                for i in idx:
                    off, size = ranges[i]
                    out[i] = src[off - start : off - start + size]
    except (TarTruncated, DecompressionLimit) as exc:
        raise OSError(f"{url}: {exc}") from None
    return out
