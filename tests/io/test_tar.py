"""The tar header reader against the standard library's, on tars as other writers make them.

``iter_members`` parses plain regular-file headers itself (``_fast_header``) and hands every
other header to ``tarfile.TarInfo.frombuf``; these tests hold the fast path to ``tarfile``'s
answers, member for member, and check that damage to a header is never read as a different
member.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import tarfile

import pytest

from nemo_frames.io.tar import BLOCK, TarTruncated, _fast_header, iter_members


def _tar(fmt: int, names: list[str], sizes: list[int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        d = tarfile.TarInfo("sub")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        for name, size in zip(names, sizes, strict=True):
            ti = tarfile.TarInfo(name)
            ti.size = size
            ti.mtime = 1_700_000_000
            t.addfile(ti, io.BytesIO(bytes([size % 251]) * size))
        link = tarfile.TarInfo("sub/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = names[0]
        t.addfile(link)
    return buf.getvalue()


def _expected(data: bytes) -> list[tuple[str, int, int, str]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for ti in t:
            kind = "file" if ti.isreg() else "dir" if ti.isdir() else "link" if ti.issym() or ti.islnk() else "special"
            out.append((ti.name, ti.offset_data, ti.size if kind == "file" else 0, kind))
    return out


NAMES = [
    "000001.jpg",
    "000001.txt",
    "a/b/c/000002.seg.json",
    "p" * 98 + ".j",  # fills the 100-byte name field exactly (no NUL)
    "long/" + "x" * 150 + ".jpg",  # ustar: prefix + name; GNU: a long-name record; PAX: a path record
    "café/ünïcode.jpg",
    "trailing space .txt",
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "ustar", "pax"])
def test_members_match_tarfile_for_each_format(fmt):
    sizes = [0, 1, 511, 512, 513, 100_000, 7]
    names = NAMES
    if fmt == tarfile.USTAR_FORMAT:  # ASCII only; a long path must split into prefix (155) + name (100)
        names = [n.replace("ü", "u").replace("ï", "i").replace("é", "e") for n in NAMES]
        names[4] = "long/" + "y" * 120 + "/" + "x" * 90 + ".jpg"
    data = _tar(fmt, names, sizes)
    got = [(m.name, m.data_offset, m.size, m.kind) for m in iter_members(io.BytesIO(data))]
    assert got == _expected(data)
    # the data handed back for wanted members is the member's bytes, in both the window and a big read
    for m in iter_members(io.BytesIO(data), want=lambda n, s: True, max_read_size=1 << 20):
        if m.kind == "file":
            assert m.data == data[m.data_offset : m.data_offset + m.size]


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_written_archive_matches_tarfile(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    rng = random.Random(3)
    for i in range(40):
        (src / "d" / f"{i:05d}.jpg").write_bytes(rng.randbytes(rng.randrange(0, 300_000)))
        (src / "d" / f"{i:05d}.json").write_text(f'{{"i": {i}}}')
    for fmt in ("gnu", "ustar", "posix", "v7"):
        out = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "-cf", str(out), "-C", str(src), "d"], check=True)
        data = out.read_bytes()
        with open(out, "rb") as f:  # a real file: the read-ahead window and seeks past big members
            got = [(m.name, m.data_offset, m.size, m.kind) for m in iter_members(f)]
        assert got == _expected(data), fmt


def test_damaged_headers_are_never_read_as_another_member():
    """Every single-byte change to a header: the fast path either declines it or agrees with tarfile."""
    data = _tar(tarfile.GNU_FORMAT, ["000001.jpg"], [1234])
    header = data[BLOCK : 2 * BLOCK]  # the regular file (after the directory)
    assert _fast_header(header) == ("000001.jpg", 1234)
    rng = random.Random(0)
    agreed = declined = 0
    for pos in range(BLOCK):
        for value in {rng.randrange(256), 0, 0x20, ord("7"), header[pos] ^ 1}:
            if value == header[pos]:
                continue
            bad = bytearray(header)
            bad[pos] = value
            fast = _fast_header(bytes(bad))
            if fast is None:
                declined += 1
                continue
            ti = tarfile.TarInfo.frombuf(bytes(bad), "utf-8", "surrogateescape")  # must not raise
            assert ti.isreg() and (ti.name, ti.size) == fast, (pos, value)
            agreed += 1
    # what passes is a change tarfile reads the same way (e.g. the checksum field's terminator)
    assert declined > 2000 and agreed < 20


def test_a_fixed_checksum_change_in_an_ignored_field_reads_like_tarfile():
    data = _tar(tarfile.GNU_FORMAT, ["000001.jpg"], [99])
    bad = bytearray(data[BLOCK : 2 * BLOCK])
    bad[108:116] = b"0001750\0"  # uid, then a checksum that matches again
    bad[148:156] = b"        "
    bad[148:156] = b"%06o\0 " % sum(bad)
    ti = tarfile.TarInfo.frombuf(bytes(bad), "utf-8", "surrogateescape")
    assert _fast_header(bytes(bad)) == (ti.name, ti.size) == ("000001.jpg", 99)


def test_negative_and_base256_sizes_go_to_tarfile():
    data = _tar(tarfile.GNU_FORMAT, ["000001.jpg"], [5])
    for field in (b"-0000000005\0", b"\xff" * 12, b"\x80" + b"\0" * 10 + b"\x05"):
        bad = bytearray(data[BLOCK : 2 * BLOCK])
        bad[124:136] = field
        bad[148:156] = b"        "
        bad[148:156] = b"%06o\0 " % sum(bad)
        assert _fast_header(bytes(bad)) is None


class _Pipe(io.RawIOBase):
    """A stream that cannot seek and returns short reads, like a pipe or a decompressor."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        chunk = self._b.read(min(len(b), 777))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_a_stream_that_cannot_seek_reads_the_same_members_and_bytes():
    sizes = [3, 300_000, 0, 70_000, 512, 9]
    names = [f"{i:03d}.{'jpg' if i % 2 else 'json'}" for i in range(len(sizes))]
    data = _tar(tarfile.GNU_FORMAT, names, sizes)
    want = lambda n, s: n.endswith(".json")  # noqa: E731
    seek = [(m.name, m.data_offset, m.size, m.data) for m in iter_members(io.BytesIO(data), want=want)]
    pipe = [(m.name, m.data_offset, m.size, m.data) for m in iter_members(_Pipe(data), want=want)]
    assert pipe == seek
    assert [d for *_, d in seek if d is not None] == [bytes([s % 251]) * s for s in sizes[::2]]
    # cut inside the big member: both report the cut at the same member
    for stream in (io.BytesIO(data[:200_000]), _Pipe(data[:200_000])):
        with pytest.raises(TarTruncated, match=r"inside member '001\.jpg'"):
            list(iter_members(stream, want=want))
