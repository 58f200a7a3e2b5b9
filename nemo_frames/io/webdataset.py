"""The scan pass: WebDataset tar shards → the sample table, with byte locators.

Keys follow WebDataset's rule: a member's key is its path up to the first dot of
its basename, and its extension is everything after that dot
(``a/b/x.seg.jpg`` → key ``a/b/x``, extension ``seg.jpg``). Consecutive members
with the same key form one sample. The role of a member (image, caption,
sidecar) is decided by the last dotted component of its extension, so
``x.seg.jpg`` is an image.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import dask.dataframe as dd
import pandas as pd

from nemo_frames import schema as S
from nemo_frames.io.compressed import MAX_RATIO, MAX_TOTAL, DecompressionLimit, finish, open_shard
from nemo_frames.io.jsonsafe import dumps_sorted, loads_strict
from nemo_frames.io.tar import NotATar, TarCorrupt, TarMember, TarTruncated, iter_members, no_gc
from nemo_frames.io.urls import expand_urls, group_shards
from nemo_frames.ledger import STRING
from nemo_frames.schema import ErrorCode, Status, error_text

OnError = Literal["record", "raise"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_DTYPES = {"string": STRING, "int": "Int64", "float": "float64", "bool": "boolean"}


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Settings of the scan pass (see :func:`read_webdataset`)."""

    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_extensions: tuple[str, ...] = ("txt",)
    json_extensions: tuple[str, ...] = ("json",)
    caption_fields: tuple[str, ...] = ("caption", "text", "TEXT")
    max_member_size: int = 256 << 20
    max_sidecar_size: int = 4 << 20
    fields: tuple[tuple[str, str], ...] = ()
    with_bytes: bool = False
    on_error: OnError = "record"
    max_decompressed: int = MAX_TOTAL
    max_compression_ratio: float = MAX_RATIO

    @functools.cached_property
    def roles(self) -> dict[str, str]:
        """Role of each extension seen so far: a shard has a handful of extensions and thousands of members."""
        return {}


class ShardScanError(RuntimeError):
    """Raised under ``on_error="raise"`` for the first problem found in a shard."""


# --------------------------------------------------------------------------- one shard
def _split_key(name: str) -> tuple[str, str] | None:
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :]


def _readable_name(name: str) -> str | None:
    """``name`` with its undecodable bytes escaped (``caf\\xe9.jpg``), or None when it is valid UTF-8.

    Tar names are bytes; the reader decodes them as UTF-8 with ``surrogateescape``, so a name
    that is not UTF-8 (Latin-1 ``caf\xe9.jpg``, a PAX path with ``hdrcharset=BINARY``) arrives with
    lone surrogates, which Arrow, JSON and most file systems refuse.
    """
    if name.isascii():
        return None
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unsafe_reason(name: str) -> str | None:
    if name.isprintable() and ".." not in name and "\\" not in name and name[:1] != "/" and name[1:2] != ":":
        return None  # the common case, decided without a regular expression
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return f"member {name!r} has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return f"member {name!r} has a '..' path component"
    if _CONTROL.search(name):
        return f"member {name!r} has control characters in its name"
    return None


def _role(ext: str, cfg: ScanConfig) -> str:
    roles = cfg.roles
    role = roles.get(ext)
    if role is None:
        role = _role_of(ext, cfg)
        if len(roles) < 1024:
            roles[ext] = role
    return role


def _role_of(ext: str, cfg: ScanConfig) -> str:
    last = ext.rsplit(".", 1)[-1].lower()
    if last in cfg.image_extensions:
        return "image"
    if last in cfg.caption_extensions:
        return "caption"
    if last in cfg.json_extensions:
        return "json"
    return "other"


def _want(cfg: ScanConfig):
    def want(name: str, size: int) -> bool:
        sk = _split_key(name)
        if sk is None:
            return False
        role = _role(sk[1], cfg)
        if role in ("caption", "json"):
            return size <= cfg.max_sidecar_size
        return role == "image" and cfg.with_bytes and size <= cfg.max_member_size

    return want


def _cast_field(value: Any, kind: str) -> tuple[bool, Any]:
    """(ok, value) for a sidecar value cast to a field kind; not ok → it stays in ``json``."""
    if value is None:
        return True, None
    if kind == "string":
        return (True, value) if isinstance(value, str) else (False, None)
    if kind == "bool":
        return (True, value) if isinstance(value, bool) else (False, None)
    if isinstance(value, bool):
        return False, None
    if kind == "int":
        return (True, value) if isinstance(value, int) and abs(value) < 2**63 else (False, None)
    if kind == "float":
        return (True, float(value)) if isinstance(value, (int, float)) else (False, None)
    return False, None


class _Sample:
    __slots__ = ("error", "key", "members")

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: list[TarMember] = []
        self.error: str | None = None


def _new_row(source: str) -> dict[str, Any]:
    return {
        S.KEY: None,
        S.SOURCE: source,
        S.IMAGE_MEMBER: None,
        S.IMAGE_OFFSET: None,
        S.IMAGE_SIZE: None,
        S.CAPTION: None,
        S.JSON: None,
        S.MEMBERS: None,
        S.IMAGE_BYTES: None,
        S.STATUS: Status.OK.value,
        S.ERROR: None,
    }


def _members_text(exts: dict[str, list[int]]) -> str:
    """``json.dumps(exts)`` (the ``nf_members`` form export writes too), without its cost for plain extensions."""
    for ext in exts:
        if not (ext.isascii() and ext.isprintable()) or '"' in ext or "\\" in ext:
            return json.dumps(exts)
    return "{" + ", ".join(f'"{ext}": [{off}, {size}]' for ext, (off, size) in exts.items()) + "}"


def _sample_row(sample: _Sample, source: str, cfg: ScanConfig, fields: dict[str, str]) -> dict[str, Any]:
    row = _new_row(source)
    row[S.KEY] = sample.key
    exts: dict[str, list[int]] = {}
    err: str | None = sample.error
    image: TarMember | None = None
    caption_m: TarMember | None = None
    json_m: TarMember | None = None
    for m in sample.members:
        ext = m.name[len(sample.key) + 1 :]
        if ext in exts and err is None:
            err = error_text(ErrorCode.DUPLICATE_KEY, f"member {m.name!r} appears twice in sample {sample.key!r}")
        exts[ext] = [m.data_offset, m.size]
        if m.size > cfg.max_member_size and err is None:
            err = error_text(
                ErrorCode.MEMBER_TOO_LARGE,
                f"member {m.name!r} has {m.size} bytes, over max_member_size={cfg.max_member_size}",
            )
        role = _role(ext, cfg)
        if role == "image":
            if image is None or (
                cfg.image_extensions.index(ext.rsplit(".", 1)[-1].lower())
                < cfg.image_extensions.index(image.name.rsplit(".", 1)[-1].lower())
            ):
                image = m
        elif role == "caption" and caption_m is None:
            caption_m = m
        elif role == "json" and json_m is None:
            json_m = m
    row[S.MEMBERS] = _members_text(exts)
    if image is not None:
        row[S.IMAGE_MEMBER] = image.name
        row[S.IMAGE_OFFSET] = image.data_offset
        row[S.IMAGE_SIZE] = image.size
        row[S.IMAGE_BYTES] = image.data
    elif err is None:
        err = error_text(
            ErrorCode.MISSING_MEMBER,
            f"sample {sample.key!r} has no image member (looked for extensions {list(cfg.image_extensions)}; "
            f"found {sorted(exts)}); set image_extensions= to read other formats",
        )
    if caption_m is not None:
        if caption_m.data is None:
            err = err or error_text(
                ErrorCode.MEMBER_TOO_LARGE,
                f"caption member {caption_m.name!r} has {caption_m.size} bytes, over max_sidecar_size={cfg.max_sidecar_size}",
            )
        else:
            try:
                row[S.CAPTION] = caption_m.data.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                err = err or error_text(ErrorCode.CAPTION_INVALID, f"{caption_m.name!r} is not UTF-8 ({exc.reason})")
    if json_m is not None:
        if json_m.data is None:
            err = err or error_text(
                ErrorCode.MEMBER_TOO_LARGE,
                f"sidecar {json_m.name!r} has {json_m.size} bytes, over max_sidecar_size={cfg.max_sidecar_size}",
            )
        else:
            parsed = True
            try:
                doc = loads_strict(json_m.data)
            except ValueError as exc:
                err = err or error_text(ErrorCode.SIDECAR_INVALID, f"{json_m.name!r} is not valid JSON ({exc})")
                doc = None
                parsed = False
            if parsed and not isinstance(doc, dict):
                err = err or error_text(
                    ErrorCode.SIDECAR_INVALID, f"{json_m.name!r} holds a JSON {type(doc).__name__}, expected an object"
                )
                doc = None
            if doc is not None:
                rest: dict[str, Any] = {}
                for k, v in doc.items():
                    kind = fields.get(k)
                    ok, cast = _cast_field(v, kind) if kind else (False, None)
                    if ok:
                        row[k] = cast
                    else:
                        rest[k] = v
                if row[S.CAPTION] is None:
                    for cf in cfg.caption_fields:
                        if isinstance(doc.get(cf), str):
                            row[S.CAPTION] = doc[cf]
                            break
                row[S.JSON] = dumps_sorted(rest) if rest else None
    if err is not None:
        row[S.STATUS] = Status.ERROR.value
        row[S.ERROR] = err
    return row


def _error_row(source: str, code: ErrorCode, message: str, key: str | None = None) -> dict[str, Any]:
    row = _new_row(source)
    row[S.KEY] = key
    row[S.STATUS] = Status.ERROR.value
    row[S.ERROR] = error_text(code, message)
    return row


def scan_shard(url: str, cfg: ScanConfig, fields: dict[str, str], storage_options: dict[str, Any] | None) -> list[dict]:
    """Scan one shard into row dicts (one per sample, plus shard-level error rows with a null key)."""
    rows: list[dict[str, Any]] = []
    samples: list[_Sample] = []
    seen: set[str] = set()
    current: _Sample | None = None

    def close() -> None:
        nonlocal current
        if current is not None:
            samples.append(current)
            current = None

    try:
        with open_shard(
            url, storage_options=storage_options, max_total=cfg.max_decompressed, max_ratio=cfg.max_compression_ratio
        ) as f:
            try:
                for m in iter_members(f, want=_want(cfg), max_read_size=max(cfg.max_sidecar_size, cfg.max_member_size)):
                    if m.kind == "dir":
                        continue
                    bad_name = None
                    readable = _readable_name(m.name)
                    if readable is not None:
                        # Keep the sample as an error row under its escaped name, never drop it.
                        bad_name = (
                            f"member name {readable!r} is not valid UTF-8 (shown with its bad bytes escaped); "
                            "WebDataset keys are text: rename the member in the shard"
                        )
                        m = dataclasses.replace(m, name=readable)
                    unsafe = _unsafe_reason(m.name)
                    sk = _split_key(m.name)
                    if sk is None:
                        close()
                        rows.append(
                            _error_row(
                                url,
                                ErrorCode.UNSAFE_MEMBER if unsafe else ErrorCode.BAD_KEY,
                                unsafe
                                or bad_name
                                or f"member {m.name!r} has no extension, so it has no WebDataset key (key.ext expected)",
                                key=m.name,
                            )
                        )
                        continue
                    key = sk[0]
                    if current is None or current.key != key:
                        close()
                        current = _Sample(key)
                        if key in seen:
                            current.error = error_text(
                                ErrorCode.DUPLICATE_KEY,
                                f"key {key!r} appears again at byte {m.offset} after another sample; the first one is kept",
                            )
                        seen.add(key)
                    current.members.append(m)
                    if current.error is None:
                        if m.error is not None:
                            current.error = error_text(ErrorCode.SHARD_UNREADABLE, f"member {m.name!r}: {m.error}")
                        elif bad_name is not None:
                            current.error = error_text(ErrorCode.BAD_KEY, bad_name)
                        elif unsafe:
                            current.error = error_text(ErrorCode.UNSAFE_MEMBER, unsafe)
                        elif m.kind != "file":
                            current.error = error_text(
                                ErrorCode.UNSAFE_MEMBER,
                                f"member {m.name!r} is a {m.kind} (link, device, FIFO or sparse file), not a regular "
                                "file; such members are never followed or read",
                            )
                close()
                finish(f)  # a compressed shard: its end marker and checksum, after the tar's own
            except TarTruncated as exc:
                # The sample being read when the archive ended may be incomplete: record it.
                if current is not None:
                    current.error = error_text(
                        ErrorCode.SHARD_TRUNCATED,
                        f"the shard ends inside or right after this sample ({exc}); it may be incomplete",
                    )
                close()
                rows.append(_error_row(url, ErrorCode.SHARD_TRUNCATED, f"{exc}; samples after this point are lost"))
            except TarCorrupt as exc:
                if current is not None:
                    current.error = current.error or error_text(ErrorCode.SHARD_TRUNCATED, f"corrupt header after it: {exc}")
                close()
                rows.append(_error_row(url, ErrorCode.SHARD_UNREADABLE, f"{exc}; samples after this point are lost"))
            except NotATar as exc:
                rows.append(_error_row(url, ErrorCode.NOT_A_TAR, f"{url}: {exc}"))
            except DecompressionLimit as exc:
                if current is not None:
                    current.error = current.error or error_text(ErrorCode.DECOMPRESSION_BOMB, f"the cap was reached in or right after this sample ({exc})")
                close()
                rows.append(_error_row(url, ErrorCode.DECOMPRESSION_BOMB, f"{exc}; samples after this point are not read"))
    except (OSError, ValueError) as exc:
        # A read error mid-stream: the sample being read may be incomplete; record it, never drop it.
        if current is not None:
            current.error = current.error or error_text(
                ErrorCode.SHARD_UNREADABLE, f"reading the shard failed inside or right after this sample ({exc})"
            )
        close()
        rows.append(_error_row(url, ErrorCode.SHARD_UNREADABLE, f"{url}: {type(exc).__name__}: {exc}"))
    return [_sample_row(s, url, cfg, fields) for s in samples] + rows


# --------------------------------------------------------------------------- table building
def _meta(cfg: ScanConfig, fields: dict[str, str]) -> pd.DataFrame:
    cols: dict[str, Any] = {
        S.KEY: STRING,
        S.SOURCE: STRING,
        S.IMAGE_MEMBER: STRING,
        S.IMAGE_OFFSET: "Int64",
        S.IMAGE_SIZE: "Int64",
        S.CAPTION: STRING,
    }
    for name, kind in fields.items():
        cols[name] = _FIELD_DTYPES[kind]
    cols[S.JSON] = STRING
    cols[S.MEMBERS] = STRING
    if cfg.with_bytes:
        cols[S.IMAGE_BYTES] = S.pandas_dtype(S.IMAGE_BYTES)
    cols[S.STATUS] = STRING
    cols[S.ERROR] = STRING
    cols[S.REASON] = STRING
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in cols.items()})


def rows_to_frame(rows: list[dict[str, Any]], meta: pd.DataFrame) -> pd.DataFrame:
    """Row dicts → a pandas partition with ``meta``'s columns and dtypes (missing keys are null)."""
    data = {}
    n = len(rows)
    for col, dtype in meta.dtypes.items():
        values = [r.get(col) for r in rows]
        if isinstance(dtype, pd.ArrowDtype):
            import pyarrow as pa

            data[col] = pd.Series(pa.array(values, type=dtype.pyarrow_dtype), dtype=dtype)
        else:
            try:
                data[col] = pd.Series(values if n else [], dtype=dtype)
            except UnicodeEncodeError:
                # A lone surrogate that got past the readers must not take the partition down with an
                # empty UnicodeEncodeError: store it escaped (the readers record why on the row).
                data[col] = pd.Series([_escape_surrogates(v) for v in values], dtype=dtype)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


def _escape_surrogates(v: Any) -> Any:
    if isinstance(v, str):
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    return v


def _scan_partition(
    group: Sequence[str], cfg: ScanConfig, fields: dict[str, str], storage_options: dict[str, Any] | None
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    with no_gc():
        for url in group:
            rows.extend(scan_shard(url, cfg, fields, storage_options))
    if cfg.on_error == "raise":
        for r in rows:
            if r[S.STATUS] == Status.ERROR.value:
                raise ShardScanError(f"read_webdataset (on_error='raise'): {r[S.SOURCE]}: key {r[S.KEY]!r}: {r[S.ERROR]}")
    return rows_to_frame(rows, _meta(cfg, fields))


def json_kind(v: Any) -> str | None:
    """The field kind of a JSON value: "bool", "int", "float", "string", "nested", or None for null."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if abs(v) < 2**63 else "nested"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if v is None:
        return None
    return "nested"


def merge_kinds(kinds: dict[str, set[str]]) -> dict[str, str]:
    """One kind per field from the kinds seen: ints and floats make "float"; nested or mixed fields are left out."""
    out: dict[str, str] = {}
    for k, ks in kinds.items():
        if not ks or "nested" in ks:
            continue
        if ks == {"int"}:
            out[k] = "int"
        elif ks <= {"int", "float"}:
            out[k] = "float"
        elif len(ks) == 1:
            out[k] = next(iter(ks))
    return out


def iter_json_sidecars(
    url: str,
    is_json: Any,
    *,
    max_size: int,
    storage_options: dict[str, Any] | None = None,
    max_samples: int = 200,
) -> Iterator[dict[str, Any]]:
    """The JSON objects of a shard's first ``max_samples`` sidecars (``is_json(name)`` picks them).

    Invalid JSON, non-objects and oversized members are skipped, and a broken shard just ends
    the iteration: this only samples field types; the scan itself records what is wrong.
    """
    try:
        with open_shard(url, storage_options=storage_options) as f:
            n = 0
            for m in iter_members(f, want=lambda name, size: is_json(name) and size <= max_size):
                if m.data is None:
                    continue
                try:
                    doc = loads_strict(m.data)
                except ValueError:
                    continue
                if not isinstance(doc, dict):
                    continue
                yield doc
                n += 1
                if n >= max_samples:
                    return
    except (OSError, NotATar, TarTruncated, TarCorrupt, DecompressionLimit):
        return


def infer_fields(
    shard: str, cfg: ScanConfig, storage_options: dict[str, Any] | None, *, max_samples: int = 200
) -> dict[str, str]:
    """Infer sidecar field types ("string", "int", "float", "bool") from the JSON of one shard's first samples."""
    kinds: dict[str, set[str]] = {}
    reserved = set(S.SAMPLE_ARROW_TYPES) | {S.REASON}
    docs = iter_json_sidecars(
        shard,
        lambda name: name.rsplit(".", 1)[-1].lower() in cfg.json_extensions,
        max_size=cfg.max_sidecar_size,
        storage_options=storage_options,
        max_samples=max_samples,
    )
    for doc in docs:
        for k, v in doc.items():
            if k in reserved or not isinstance(k, str) or not k.isidentifier():
                continue
            kind = json_kind(v)
            kinds.setdefault(k, set()).update([kind] if kind else [])
    return merge_kinds(kinds)


def read_webdataset(
    urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    storage_options: dict[str, Any] | None = None,
    image_extensions: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
    caption_fields: Sequence[str] = ("caption", "text", "TEXT"),
    fields: dict[str, Literal["string", "int", "float", "bool"]] | Literal["infer"] | None = "infer",
    with_bytes: bool = False,
    partition_bytes: int | None = None,
    max_member_size: int = 256 << 20,
    max_sidecar_size: int = 4 << 20,
    check_keys: Literal["shard", "dataset"] = "shard",
    on_error: OnError = "record",
    max_decompressed: int = MAX_TOTAL,
    max_compression_ratio: float = MAX_RATIO,
) -> dd.DataFrame:
    """Scan WebDataset shards into a sample table (one row per sample, image bytes left in place).

    Parameters
    ----------
    urls : str, path or list
        Local paths, globs, brace ranges (``"shards/{00000..00099}.tar"``), directories, or
        any fsspec URL (``"s3://bucket/shards/*.tar"``).
    storage_options : dict, optional
        fsspec options for remote URLs (credentials, ``client_kwargs={"endpoint_url": ...}``).
    image_extensions : sequence of str
        Member extensions that hold the image, in order of preference.
    caption_fields : sequence of str
        JSON sidecar keys to take the caption from when the sample has no ``.txt`` member.
    fields : dict, "infer" or None
        Sidecar keys to turn into columns, with their kinds. ``"infer"`` looks at the first
        shard; keys not listed (or values of another type) stay in the ``json`` column.
    with_bytes : bool
        Also read image bytes into an ``image_bytes`` column (for a fused pass over small data).
    partition_bytes : int, optional
        Pack consecutive small shards into partitions of about this many bytes. Default: one
        partition per shard.
    max_member_size, max_sidecar_size : int
        Caps checked from tar headers before anything is read.
    check_keys : {"shard", "dataset"}
        Detect repeated keys within each shard (free), or across the whole dataset (one
        extra pass over the ``key`` column).
    on_error : {"record", "raise"}
        Record problems in the ledger columns and go on (default), or raise on the first one.
    max_decompressed, max_compression_ratio : int, float
        Caps for compressed shards (``.tar.gz``, ``.tgz``, ``.tar.zst``), which are streamed, with
        locators into the decompressed tar: decompressed bytes per shard, and decompressed ÷
        compressed bytes (checked past 64 MiB). Past a cap: ``decompression_bomb``
        (:mod:`nemo_frames.io.compressed`).

    Returns
    -------
    dask.dataframe.DataFrame
        Columns ``key, source, image_member, image_offset, image_size, caption``, the sidecar
        fields, ``json, nf_members`` (every member's ``[offset, size]`` by extension),
        optionally ``image_bytes``, and the ledger ``nf_status, nf_error, nf_reason``.
        Shard-level problems (truncated or unreadable shards) are rows with a null key.

    Raises
    ------
    NoShardsFound
        When no shard matches ``urls``.

    Examples
    --------
    >>> df = read_webdataset("shards/{00000..00009}.tar")  # doctest: +SKIP
    >>> df[df.nf_status == "ok"].caption.head()  # doctest: +SKIP
    """
    shards = expand_urls(urls, storage_options=storage_options)
    if fields == "infer":
        cfg0 = ScanConfig(image_extensions=tuple(image_extensions))
        fields_d = infer_fields(shards[0].url, cfg0, storage_options)
    else:
        fields_d = dict(fields or {})
        bad = {k: v for k, v in fields_d.items() if v not in _FIELD_DTYPES}
        if bad:
            raise ValueError(
                f"read_webdataset: fields={bad!r}: expected kinds {sorted(_FIELD_DTYPES)}; "
                "pass e.g. fields={'width': 'int', 'url': 'string'}"
            )
    cfg = ScanConfig(
        image_extensions=tuple(e.lower() for e in image_extensions),
        caption_fields=tuple(caption_fields),
        max_member_size=max_member_size,
        max_sidecar_size=max_sidecar_size,
        fields=tuple(sorted(fields_d.items())),
        with_bytes=with_bytes,
        on_error=on_error,
        max_decompressed=max_decompressed,
        max_compression_ratio=max_compression_ratio,
    )
    groups = [[s.url for s in g] for g in group_shards(shards, partition_bytes=partition_bytes)]
    meta = _meta(cfg, fields_d)
    ddf = dd.from_map(
        _scan_partition,
        groups,
        cfg=cfg,
        fields=fields_d,
        storage_options=storage_options,
        meta=meta,
        label="nf-scan",
        enforce_metadata=False,
    )
    if check_keys == "dataset":
        ddf = mark_duplicate_keys(ddf, shards=[s.url for s in shards])
    return ddf


def mark_duplicate_keys(ddf: dd.DataFrame, *, shards: Sequence[str] | None = None) -> dd.DataFrame:
    """Mark every occurrence of a key after its first (by shard order, then offset) as ``duplicate_key``.

    A distributed count by key (:func:`nemo_frames.io.keys.mark_repeated_keys` with
    ``action="error"``): no key list is collected on the driver. Rows already errored are
    left as they are.
    """
    from nemo_frames.io.keys import mark_repeated_keys

    return mark_repeated_keys(ddf, action="error", shards=shards)[0]
