"""The corrupt-input corpus: seeded generators of bad samples, each placed between good ones.

Every kind is a function ``(rng, ctx) -> Bad``. ``Bad.members`` are the bad sample's tar members (written
between two good samples before and two after, in one shard), ``Bad.mutate`` optionally rewrites the shard
bytes around the bad sample's offset, ``Bad.codes`` are the error codes that count as "recorded", and
``Bad.level`` says what the reader can promise:

* ``"sample"``: the damage is inside one sample: that sample is errored with a code, all four good
  samples are kept, byte for byte;
* ``"shard"``: the damage is in the tar structure: the good samples before it are kept (the one right
  before may be errored ``shard_truncated``, since the reader cannot know whether the broken header was
  another member of it), a shard-level row records the code, and the samples after it are reported lost by
  that row (never silently).
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from tests.reliability._battery import Member, header_checksum

Mutate = Callable[[bytes, int], bytes]


@dataclasses.dataclass
class Bad:
    members: list[Member]
    codes: set[str]
    level: Literal["sample", "shard"] = "sample"
    mutate: Mutate | None = None
    note: str = ""


@dataclasses.dataclass
class Ctx:
    key: str  # the bad sample's key
    jpeg: bytes  # a real photo as JPEG
    png: bytes
    webp: bytes
    good_key: str  # the key of a good sample earlier in the same shard
    max_sidecar_size: int


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


def _good_sample(ctx: Ctx, image: bytes, ext: str = "jpg", **over: bytes) -> list[Member]:
    m = {ext: image, "txt": f"caption of {ctx.key}".encode(), "json": json.dumps({"id": ctx.key, "w": 1}).encode()}
    m.update(over)
    return [Member(f"{ctx.key}.{e}", d) for e, d in m.items()]


# --------------------------------------------------------------------------- tar structure
def tar_header_bitflip(rng: np.random.Generator, ctx: Ctx) -> Bad:
    # Any bit outside the checksum field changes the header sum; a flip inside it changes the stored value.
    pos = int(rng.choice([p for p in range(512) if not 148 <= p < 156]))
    bit = int(rng.integers(8))
    return Bad(_good_sample(ctx, ctx.jpeg), {"shard_unreadable"}, "shard",
               lambda b, off: b[:off] + _flip(b[off:off + 512], pos, bit) + b[off + 512:], f"byte {pos} bit {bit}")


def tar_wrong_checksum(rng: np.random.Generator, ctx: Ctx) -> Bad:
    def mutate(b: bytes, off: int) -> bytes:
        h = bytearray(b[off:off + 512])
        stored = int(h[148:154].decode().strip("\0 ") or "0", 8)
        wrong = (stored + int(rng.integers(1, 5000))) % 0o777777
        h[148:156] = f"{wrong:06o}\0 ".encode()
        return b[:off] + bytes(h) + b[off + 512:]

    return Bad(_good_sample(ctx, ctx.jpeg), {"shard_unreadable"}, "shard", mutate)


def tar_garbage_block(rng: np.random.Generator, ctx: Ctx) -> Bad:
    n = int(rng.integers(1, 4)) * 512
    garbage = rng.bytes(n)
    if rng.random() < 0.3:  # a lone zero block followed by data: not an end-of-archive marker
        garbage = b"\0" * 512 + garbage
    return Bad(_good_sample(ctx, ctx.jpeg), {"shard_unreadable"}, "shard", lambda b, off: b[:off] + garbage + b[off:])


def tar_oversized_header(rng: np.random.Generator, ctx: Ctx) -> Bad:
    variant = int(rng.integers(3))
    huge = int(rng.integers(1 << 33, 1 << 45))

    def mutate(b: bytes, off: int) -> bytes:
        h = bytearray(b[off:off + 512])
        if variant == 0:  # the image member claims a huge size (base-256 size field)
            h[124:136] = b"\x80" + huge.to_bytes(11, "big")
        elif variant == 1:  # a GNU long-name header claiming a huge name
            h[0:100] = b"././@LongLink".ljust(100, b"\0")
            h[156:157] = tarfile.GNUTYPE_LONGNAME
            h[124:136] = f"{huge % (8 ** 11):011o}\0".encode()
        else:  # a PAX header whose record sets a huge size for the next member
            return b[:off] + _pax(f"size={huge}") + b[off:]
        return b[:off] + header_checksum(bytes(h)) + b[off + 512:]

    return Bad(_good_sample(ctx, ctx.jpeg), {"member_too_large", "shard_truncated", "shard_unreadable"}, "shard",
               mutate, ["size", "longname", "pax"][variant])


def _pax(record: str) -> bytes:
    body = f" {record}\n"
    n = len(body)
    n += len(str(n + len(str(n))))
    data = f"{n}{body}".encode()
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type = tarfile.XHDTYPE
    ti.size = len(data)
    h = ti.tobuf(format=tarfile.USTAR_FORMAT)
    return h + data + b"\0" * (-len(data) % 512)


def tar_truncated(rng: np.random.Generator, ctx: Ctx) -> Bad:
    frac = float(rng.random())

    def mutate(b: bytes, off: int) -> bytes:
        # tarfile pads archives to 10 KiB records with zeros: cut before the end-of-archive marker.
        end = -(-len(b.rstrip(b"\0")) // 512) * 512
        return b[: off + int(frac * (end - off))]

    return Bad(_good_sample(ctx, ctx.jpeg), {"shard_truncated"}, "shard", mutate)


# --------------------------------------------------------------------------- images
def garbage_image(rng: np.random.Generator, ctx: Ctx) -> Bad:
    v = int(rng.integers(4))
    data = [b"", rng.bytes(int(rng.integers(1, 5000))), b"<html><body>404 Not Found</body></html>",
            b"\xff\xd8\xff" + rng.bytes(64)][v]
    return Bad(_good_sample(ctx, data, str(rng.choice(["jpg", "png", "webp"]))), {"decode_error", "unsupported_format"})


def _corrupt(data: bytes, rng: np.random.Generator, header_len: int) -> bytes:
    if rng.random() < 0.5:
        return data[: int(len(data) * rng.uniform(0.05, 0.95))]
    pos = int(rng.integers(2, header_len))
    return _flip(data, pos, int(rng.integers(8)))


def _jpeg_header_len(data: bytes) -> int:
    return data.index(b"\xff\xda")  # start of scan: everything before is headers (DQT, SOF, DHT)


def corrupt_jpeg(rng: np.random.Generator, ctx: Ctx) -> Bad:
    # JPEG has no checksum: a flipped bit in entropy data or in a quantisation table decodes "fine" and no
    # reader can tell (only a writer's content hash could). Detectable damage: cuts and broken markers.
    data = ctx.jpeg
    v = int(rng.integers(3))
    if v == 0:
        bad = data[: int(len(data) * rng.uniform(0.05, 0.95))]
    elif v == 1:  # start-of-image marker damaged
        bad = _flip(data, int(rng.integers(2)), int(rng.integers(8)))
    else:  # the start-of-scan marker turned into garbage: the decoder never reaches the pixels
        sos = _jpeg_header_len(data)
        bad = data[:sos] + bytes([0x00, 0x00]) + data[sos + 2:]
    return Bad(_good_sample(ctx, bad), {"decode_error", "unsupported_format"}, note=["cut", "SOI", "SOS"][v])


def corrupt_png(rng: np.random.Generator, ctx: Ctx) -> Bad:
    # PNG chunks carry CRCs: a flip anywhere is detectable.
    return Bad(_good_sample(ctx, _corrupt(ctx.png, rng, len(ctx.png)), "png"), {"decode_error", "unsupported_format"})


def corrupt_webp(rng: np.random.Generator, ctx: Ctx) -> Bad:
    data = ctx.webp
    if rng.random() < 0.5:
        bad = data[: int(len(data) * rng.uniform(0.05, 0.95))]
    else:  # the RIFF / VP8 headers (VP8 data itself has no checksum)
        bad = _flip(data, int(rng.integers(0, 30)), int(rng.integers(8)))
        if bad[8:12] == b"WEBP" and bad[12:16] in (b"VP8 ", b"VP8L", b"VP8X") and bad[4:8] == data[4:8]:
            bad = bad[:12] + b"XXXX" + bad[16:]
    return Bad(_good_sample(ctx, bad, "webp"), {"decode_error", "unsupported_format"})


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header(w: int, h: int, extra: bytes = b"") -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
    return b"\x89PNG\r\n\x1a\n" + ihdr + extra + idat + _png_chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, w: int, h: int) -> bytes:
    i = 2
    b = bytearray(jpeg)
    while i < len(b):
        marker, ln = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 7] = h.to_bytes(2, "big")
            b[i + 7:i + 9] = w.to_bytes(2, "big")
            return bytes(b)
        i += 2 + ln
    raise ValueError("no SOF marker")


def gif_header(w: int, h: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
            + b"\x02\x02\x44\x01\x00\x3b")


def image_bomb(rng: np.random.Generator, ctx: Ctx) -> Bad:
    side = int(rng.integers(20_000, 65_000))
    if rng.random() < 0.5:
        data, ext = png_header(side, side), "png"
    else:
        data, ext = jpeg_with_size(ctx.jpeg, side, side), "jpg"
    return Bad(_good_sample(ctx, data, ext), {"image_too_large"}, note=f"{ext} {side}x{side}")


# --------------------------------------------------------------------------- captions and JSON sidecars
def caption_bad_utf8(rng: np.random.Generator, ctx: Ctx) -> Bad:
    text = f"caption {ctx.key} ".encode()
    bad = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"][int(rng.integers(5))]
    return Bad(_good_sample(ctx, ctx.jpeg, txt=text + bad + text), {"caption_invalid"})


def caption_oversized(rng: np.random.Generator, ctx: Ctx) -> Bad:
    n = ctx.max_sidecar_size + int(rng.integers(1, 100_000))
    return Bad(_good_sample(ctx, ctx.jpeg, txt=b"a" * n), {"member_too_large"})


def json_syntax(rng: np.random.Generator, ctx: Ctx) -> Bad:
    doc = json.dumps({"id": ctx.key, "url": "https://example.org/x", "tags": ["a", "b"], "n": 3}).encode()
    v = int(rng.integers(3))
    bad = [doc[: int(rng.integers(1, len(doc) - 1))], doc.replace(b":", b"=", 1), rng.bytes(40)][v]
    return Bad(_good_sample(ctx, ctx.jpeg, json=bad), {"sidecar_invalid"})


def json_deep_nesting(rng: np.random.Generator, ctx: Ctx) -> Bad:
    depth = int(rng.integers(5_000, 200_000))
    opener, closer = (b"[", b"]") if rng.random() < 0.5 else (b'{"a":', b"}")
    return Bad(_good_sample(ctx, ctx.jpeg, json=opener * depth + b"1" + closer * depth),
               {"sidecar_invalid", "member_too_large"}, note=str(depth))


def json_huge_numbers(rng: np.random.Generator, ctx: Ctx) -> Bad:
    v = int(rng.integers(3))
    num = ["9" * int(rng.integers(5_000, 50_000)), f"1e{int(rng.integers(400, 100000))}",
           f"-{rng.integers(2, 9)}e{int(rng.integers(400, 100000))}"][v]
    return Bad(_good_sample(ctx, ctx.jpeg, json=b'{"id": "x", "n": ' + num.encode() + b"}"), {"sidecar_invalid"})


def json_nan_infinity(rng: np.random.Generator, ctx: Ctx) -> Bad:
    tok = ["NaN", "Infinity", "-Infinity"][int(rng.integers(3))]
    return Bad(_good_sample(ctx, ctx.jpeg, json=f'{{"id": "x", "similarity": {tok}}}'.encode()), {"sidecar_invalid"})


def json_wrong_type(rng: np.random.Generator, ctx: Ctx) -> Bad:
    doc = ["[1, 2, 3]", '"a string"', "42", "null", "true", "[]"][int(rng.integers(6))]
    return Bad(_good_sample(ctx, ctx.jpeg, json=doc.encode()), {"sidecar_invalid"})


def json_bad_utf8(rng: np.random.Generator, ctx: Ctx) -> Bad:
    return Bad(_good_sample(ctx, ctx.jpeg, json=b'{"caption": "caf\xe9 ' + rng.bytes(3).replace(b'"', b"x") + b'\xff"}'),
               {"sidecar_invalid"})


# --------------------------------------------------------------------------- sample structure and names
def missing_image(rng: np.random.Generator, ctx: Ctx) -> Bad:
    ms = [m for m in _good_sample(ctx, ctx.jpeg) if not m.name.endswith(".jpg")]
    if rng.random() < 0.5:
        ms.append(Member(f"{ctx.key}.bin", rng.bytes(100)))
    return Bad(ms, {"missing_member"})


def duplicate_key(rng: np.random.Generator, ctx: Ctx) -> Bad:
    # Reuses the key of an earlier good sample of the same shard (non-adjacent): the first one is kept.
    dup = dataclasses.replace(ctx, key=ctx.good_key)
    return Bad(_good_sample(dup, ctx.png, "png"), {"duplicate_key"})


def unsafe_name(rng: np.random.Generator, ctx: Ctx) -> Bad:
    v = int(rng.integers(5))
    k = ctx.key
    if v == 0:
        ms = [Member(f"../../{k}.jpg", ctx.jpeg), Member(f"../../{k}.txt", b"x")]
    elif v == 1:
        ms = [Member(f"/etc/{k}.jpg", ctx.jpeg), Member(f"/etc/{k}.txt", b"x")]
    elif v == 2:
        ms = [Member(f"{k}\x1b[2J.jpg", ctx.jpeg)]
    elif v == 3:
        ms = [Member(f"{k}.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd"), Member(f"{k}.txt", b"x")]
    else:
        ms = [Member(f"{k}.txt", b"x"), Member(f"{k}.jpg", type=tarfile.LNKTYPE, linkname="../../outside.jpg")]
    return Bad(ms, {"unsafe_member"})


KINDS: dict[str, Callable[[np.random.Generator, Ctx], Bad]] = {
    "tar: header bit flip": tar_header_bitflip,
    "tar: wrong checksum": tar_wrong_checksum,
    "tar: garbage blocks": tar_garbage_block,
    "tar: oversized header (size / long name / PAX)": tar_oversized_header,
    "tar: random truncation": tar_truncated,
    "image: garbage / empty member": garbage_image,
    "image: corrupt JPEG (cut / header flip)": corrupt_jpeg,
    "image: corrupt PNG (cut / flip)": corrupt_png,
    "image: corrupt WebP (cut / header flip)": corrupt_webp,
    "image: bomb header (PNG / JPEG)": image_bomb,
    "caption: bad UTF-8": caption_bad_utf8,
    "caption: over size cap": caption_oversized,
    "json: syntax error": json_syntax,
    "json: deep nesting": json_deep_nesting,
    "json: huge numbers": json_huge_numbers,
    "json: NaN / Infinity": json_nan_infinity,
    "json: wrong top-level type": json_wrong_type,
    "json: bad UTF-8": json_bad_utf8,
    "sample: missing image": missing_image,
    "sample: duplicate key": duplicate_key,
    "name: ../ / absolute / control / links": unsafe_name,
}


def encoded(rgb: np.ndarray, fmt: str, **kw: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()
