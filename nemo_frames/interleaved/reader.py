"""Readers of interleaved documents: MINT-1T-style WebDataset shards and item-table Parquet.

WebDataset layout (MINT-1T PDF/ArXiv subsets, and what NeMo Curator and
:func:`~nemo_frames.interleaved.writer.write_interleaved_webdataset` write): each
``<stem>.json`` member is one sample, holding parallel lists ``texts`` and
``images`` of equal length with ``null`` where the other modality sits. Image
entries name their bytes, resolved in this order:

1. the entry is the name of a member of the shard (``"doc.3.jpg"``), or of a member
   in the JSON's directory;
2. ``image_member_field`` names a member in the JSON (a string, or a list aligned to
   the non-null images);
3. the entry is not a file name (MINT-1T: ``"page_0_image_1"``) and the sample has exactly
   one image member ``<stem>.<ext>`` (MINT-1T: ``<stem>.tiff``, a multi-frame TIFF): images
   sharing it take frames 0, 1, … in list order.

Everything that goes wrong is a row with ``nf_status="error"`` and
``nf_error="<code>: <message>"``, never an exception: see ``docs/interleaved.md``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import mimetypes
import os
from collections.abc import Sequence
from typing import Any, Literal

import dask.dataframe as dd
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_frames import schema as S
from nemo_frames.interleaved import schema as IS
from nemo_frames.io.compressed import DecompressionLimit, finish, open_shard
from nemo_frames.io.jsonsafe import loads_strict
from nemo_frames.io.tar import NotATar, TarCorrupt, TarMember, TarTruncated, iter_members
from nemo_frames.io.urls import expand_urls
from nemo_frames.io.webdataset import iter_json_sidecars, json_kind, merge_kinds, rows_to_frame
from nemo_frames.ledger import STRING
from nemo_frames.schema import ErrorCode, Status, error_text

ITEM_FIELDS_KEY = "nf_item_fields"
"""JSON key holding per-item passthrough values: ``{column: [value at position 0, 1, ...]}``."""
JSON_COLUMN = S.JSON
Kind = Literal["string", "int", "float", "bool"]
_KIND_DTYPES: dict[str, Any] = {"string": STRING, "int": "Int64", "float": "float64", "bool": "boolean"}
_TIFF_EXTS = ("tif", "tiff")


@dataclasses.dataclass(frozen=True)
class InterleavedReadConfig:
    """Settings of :func:`read_interleaved_webdataset` (see its parameters)."""

    materialize: bool = False
    sample_id_field: str | None = "sample_id"
    texts_field: str = "texts"
    images_field: str = "images"
    image_member_field: str | None = None
    json_extensions: tuple[str, ...] = ("json",)
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp", "gif")
    max_member_size: int = 256 << 20
    max_json_size: int = 16 << 20
    fields: tuple[tuple[str, str], ...] = ()
    item_fields: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- helpers
def content_type_of(name: str) -> str:
    """MIME type from a member name (``application/octet-stream`` when unknown)."""
    ext = name.rsplit(".", 1)[-1].lower()
    if ext in _TIFF_EXTS:
        return "image/tiff"
    if ext == "webp":
        return "image/webp"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


FRAME_COMPRESSION = "raw"
"""Compression of a TIFF frame re-saved on its own. Uncompressed: measured 17 ms per 640×640 frame vs 94 ms
for deflate (``tiff_adobe_deflate``), for 1.3× the bytes (benchmarks/interleaved_io.py); lossless either way."""


def extract_frames(data: bytes, frame_indices: Sequence[int], *, compression: str = FRAME_COMPRESSION) -> list[bytes | Exception]:
    """Frames of a (multi-frame) TIFF, each re-saved as a single-frame TIFF; the file is opened once.

    Returns one entry per index: the bytes, or the exception for that frame (``IndexError``
    when the TIFF has no such frame, any PIL error for an unreadable one).
    """
    from PIL import Image

    out: list[bytes | Exception] = []
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises many types for corrupt files
        return [exc for _ in frame_indices]
    with im:
        n = getattr(im, "n_frames", 1)
        for fi in frame_indices:
            if not 0 <= fi < n:
                out.append(IndexError(f"frame {fi} does not exist (the TIFF has {n} frame{'s' if n != 1 else ''})"))
                continue
            try:
                im.seek(fi)
                im.load()
                buf = io.BytesIO()
                im.save(buf, format="TIFF", compression=compression)
                out.append(buf.getvalue())
            except Exception as exc:
                out.append(exc)
    return out


def extract_frame(data: bytes, frame_index: int, *, compression: str = FRAME_COMPRESSION) -> bytes:
    """One frame of a (multi-frame) TIFF, re-saved as a single-frame TIFF (lossless).

    Raises
    ------
    IndexError
        The TIFF has no frame ``frame_index``.
    Exception
        What PIL raises for bytes that are not a readable TIFF.
    """
    res = extract_frames(data, [frame_index], compression=compression)[0]
    if isinstance(res, Exception):
        raise res
    return res


def _cast(v: Any, kind: str | None) -> tuple[bool, Any]:
    if v is None:
        return True, None
    if kind is None:
        return False, None
    k = json_kind(v)
    if k == kind:
        return True, v
    if kind == "float" and k == "int":
        return True, float(v)
    return False, None


def _reserved_json_keys(cfg: InterleavedReadConfig) -> set[str]:
    keys = {cfg.texts_field, cfg.images_field, ITEM_FIELDS_KEY}
    if cfg.sample_id_field:
        keys.add(cfg.sample_id_field)
    if cfg.image_member_field:
        keys.add(cfg.image_member_field)
    return keys


def _is_json(name: str, cfg: InterleavedReadConfig) -> bool:
    return name.rsplit(".", 1)[-1].lower() in cfg.json_extensions and "." in name.rsplit("/", 1)[-1]


def _is_image(name: str, cfg: InterleavedReadConfig) -> bool:
    return name.rsplit(".", 1)[-1].lower() in cfg.image_extensions


def infer_fields(
    url: str, cfg: InterleavedReadConfig, storage_options: dict[str, Any] | None = None, *, max_samples: int = 200
) -> tuple[dict[str, str], dict[str, str]]:
    """Kinds of the sample-level and per-item passthrough fields, from the first samples of one shard."""
    kinds: dict[str, set[str]] = {}
    item_kinds: dict[str, set[str]] = {}
    reserved = _reserved_json_keys(cfg) | set(IS.RESERVED) | set(IS.LEDGER_TYPES) | {JSON_COLUMN}
    docs = iter_json_sidecars(
        url,
        lambda name: _is_json(name, cfg),
        max_size=cfg.max_json_size,
        storage_options=storage_options,
        max_samples=max_samples,
    )
    for doc in docs:
        for k, v in doc.items():
            if k in reserved:
                continue
            kind = json_kind(v)
            kinds.setdefault(k, set()).update([kind] if kind else [])
        extra = doc.get(ITEM_FIELDS_KEY)
        if isinstance(extra, dict):
            for k, vals in extra.items():
                if k in reserved or not isinstance(vals, list):
                    continue
                item_kinds.setdefault(k, set()).update(kd for kd in map(json_kind, vals) if kd)
    return merge_kinds(kinds), merge_kinds(item_kinds)


# --------------------------------------------------------------------------- one shard
def _row(sample_id: Any, position: int, modality: str, **kw: Any) -> dict[str, Any]:
    r = {
        IS.SAMPLE_ID: sample_id,
        IS.POSITION: position,
        IS.MODALITY: modality,
        IS.CONTENT_TYPE: None,
        IS.TEXT_CONTENT: None,
        IS.BINARY_CONTENT: None,
        IS.SOURCE_REF: None,
        IS.MATERIALIZE_ERROR: None,
        S.STATUS: Status.OK.value,
        S.ERROR: None,
        S.REASON: None,
        IS.INPUT_POSITION: position,
    }
    r.update(kw)
    return r


def _fail(row: dict[str, Any], code: ErrorCode, message: str) -> None:
    if row[S.STATUS] != Status.ERROR.value:
        row[S.STATUS] = Status.ERROR.value
        row[S.ERROR] = error_text(code, message)


class _Shard:
    """The member index of one shard (names → members), in tar order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.members: dict[str, TarMember] = {}
        self.order: list[str] = []
        self.rows: list[dict[str, Any]] = []


def _index_shard(url: str, cfg: InterleavedReadConfig, storage_options: dict[str, Any] | None) -> _Shard:
    sh = _Shard(url)

    def want(name: str, size: int) -> bool:
        if _is_json(name, cfg):
            return size <= cfg.max_json_size
        return cfg.materialize and _is_image(name, cfg) and size <= cfg.max_member_size

    def shard_error(code: ErrorCode, msg: str) -> None:
        r = _row(None, IS.UNPLACED_POSITION, "metadata", **{IS.SOURCE_REF: IS.make_ref(url)})
        _fail(r, code, msg)
        sh.rows.append(r)

    try:
        # A .tar.gz / .tar.zst is streamed with caps; its locators are offsets in the decompressed tar.
        with open_shard(url, storage_options=storage_options) as f:
            try:
                for m in iter_members(f, want=want, max_read_size=max(cfg.max_json_size, cfg.max_member_size)):
                    if m.kind != "file":
                        continue
                    if m.name in sh.members:
                        shard_error(ErrorCode.DUPLICATE_KEY, f"member {m.name!r} appears twice at byte {m.offset}; the first one is used")
                        continue
                    sh.members[m.name] = m
                    sh.order.append(m.name)
                finish(f)
            except DecompressionLimit as exc:
                shard_error(ErrorCode.DECOMPRESSION_BOMB, f"{exc}; samples after this point are not read")
            except TarTruncated as exc:
                shard_error(ErrorCode.SHARD_TRUNCATED, f"{exc}; samples after this point are lost")
            except TarCorrupt as exc:
                shard_error(ErrorCode.SHARD_UNREADABLE, f"{exc}; samples after this point are lost")
            except NotATar as exc:
                shard_error(ErrorCode.NOT_A_TAR, f"{url}: {exc}")
    except (OSError, ValueError) as exc:
        shard_error(ErrorCode.SHARD_UNREADABLE, f"{url}: {type(exc).__name__}: {exc}")
    return sh


def _resolve(
    tok: Any, i: int, n_image: int, doc: dict[str, Any], stem: str, sh: _Shard, cfg: InterleavedReadConfig
) -> tuple[str | None, str]:
    """(member name or None, explanation when None)."""
    if isinstance(tok, str):
        if tok in sh.members:
            return tok, ""
        d = stem.rsplit("/", 1)[0] + "/" if "/" in stem else ""
        if d and d + tok in sh.members:
            return d + tok, ""
    if cfg.image_member_field:
        v = doc.get(cfg.image_member_field)
        if isinstance(v, list):
            v = v[n_image] if n_image < len(v) else None
        if isinstance(v, str):
            for cand in (v, f"{stem.rsplit('/', 1)[0]}/{v}" if "/" in stem else v):
                if cand in sh.members:
                    return cand, ""
            return None, f"{cfg.image_member_field!r} names member {v!r}, which is not in the shard"
    if isinstance(tok, str) and _is_image(tok, cfg):
        return None, f"image {tok!r} at position {i}: the JSON names member {tok!r}, which is not in the shard"
    own = [n for n in sh.members if n.startswith(stem + ".") and _is_image(n, cfg)]
    if len(own) == 1:
        return own[0], ""
    if not own:
        return None, f"image {tok!r} at position {i}: no member of that name and no image member {stem}.<ext> in the shard"
    return None, f"image {tok!r} at position {i}: no member of that name, and {len(own)} members {stem}.* could hold it"


def _sample_rows(
    m: TarMember, sh: _Shard, cfg: InterleavedReadConfig, fields: dict[str, str], item_fields: dict[str, str],
    referenced: set[str],
) -> list[dict[str, Any]]:
    url = sh.url
    stem = m.name[: m.name.rfind(".")]
    json_ref = IS.make_ref(url, m.name, m.data_offset, m.size)
    meta = _row(None, IS.METADATA_POSITION, "metadata", **{IS.CONTENT_TYPE: "application/json", IS.SOURCE_REF: json_ref})
    sid_default = stem.rsplit("/", 1)[-1]
    meta[IS.SAMPLE_ID] = sid_default
    if m.data is None:
        _fail(meta, ErrorCode.MEMBER_TOO_LARGE, f"JSON member {m.name!r} has {m.size} bytes, over max_json_size={cfg.max_json_size}")
        return [meta]
    try:
        doc = loads_strict(m.data)
    except ValueError as exc:
        _fail(meta, ErrorCode.SIDECAR_INVALID, f"{m.name!r} is not valid UTF-8 JSON ({exc})")
        return [meta]
    if not isinstance(doc, dict):
        _fail(meta, ErrorCode.SIDECAR_INVALID, f"{m.name!r} holds a JSON {type(doc).__name__}, expected an object")
        return [meta]
    sid = doc.get(cfg.sample_id_field) if cfg.sample_id_field else None
    sid = sid if isinstance(sid, str) and sid else sid_default
    meta[IS.SAMPLE_ID] = sid
    texts = doc.get(cfg.texts_field)
    images = doc.get(cfg.images_field)
    texts = [] if texts is None else texts
    images = [] if images is None else images
    sample_err: str | None = None
    if not isinstance(texts, list) or not isinstance(images, list):
        _fail(meta, ErrorCode.SIDECAR_INVALID, f"{m.name!r}: {cfg.texts_field!r} and {cfg.images_field!r} must be lists")
        return [meta]
    if texts and images and len(texts) != len(images):
        sample_err = (
            f"{m.name!r}: {cfg.texts_field!r} has {len(texts)} entries and {cfg.images_field!r} has {len(images)}; "
            "the lists must be parallel (null where the other modality sits), so positions are unknowable"
        )
    # Sample-level passthrough: typed scalars become columns, the rest stays in `json`.
    rest: dict[str, Any] = {}
    reserved_json = _reserved_json_keys(cfg)
    for k, v in doc.items():
        if k in reserved_json:
            continue
        ok, val = _cast(v, fields.get(k))
        if ok and k in fields:
            meta[k] = val
        else:
            rest[k] = v
    meta[JSON_COLUMN] = json.dumps(rest, ensure_ascii=False, sort_keys=True) if rest else None
    per_item = doc.get(ITEM_FIELDS_KEY) if isinstance(doc.get(ITEM_FIELDS_KEY), dict) else {}

    rows = [meta]
    n = max(len(texts), len(images))
    uses: dict[str, list[dict[str, Any]]] = {}
    n_image = 0
    for i in range(n):
        t = texts[i] if i < len(texts) else None
        im = images[i] if i < len(images) else None
        if t is not None:
            r = _row(sid, i, "text", **{IS.CONTENT_TYPE: "text/plain", IS.SOURCE_REF: json_ref})
            if isinstance(t, str):
                r[IS.TEXT_CONTENT] = t
            else:
                _fail(r, ErrorCode.CAPTION_INVALID, f"{m.name!r}: text at position {i} is a JSON {type(t).__name__}, expected a string")
            rows.append(r)
        if im is not None:
            r = _row(sid, i, "image")
            member, why = _resolve(im, i, n_image, doc, stem, sh, cfg)
            if t is not None:
                _fail(r, ErrorCode.SIDECAR_INVALID, f"{m.name!r}: position {i} holds both a text and an image {im!r}; the text is kept")
                r[IS.SOURCE_REF] = json_ref
                if member is not None:
                    referenced.add(member)
            else:
                if member is None:
                    _fail(r, ErrorCode.MISSING_MEMBER, f"{m.name!r}: {why}")
                    r[IS.MATERIALIZE_ERROR] = why
                    r[IS.SOURCE_REF] = json_ref
                else:
                    referenced.add(member)
                    uses.setdefault(member, []).append(r)
            n_image += 1
            rows.append(r)
        for k in item_fields:
            vals = per_item.get(k)
            if isinstance(vals, list) and i < len(vals):
                ok, val = _cast(vals[i], item_fields[k])
                if ok:
                    for r in rows[-2:]:
                        if r[IS.POSITION] == i and r[IS.MODALITY] != "metadata":
                            r[k] = val
    # Locators (and bytes) of the resolved images; a TIFF shared by several images gives one frame each.
    cache: dict[str, list[bytes | Exception]] = {}

    def got_frames(member: str, data: bytes, n: int) -> list[bytes | Exception]:
        if member not in cache:
            cache[member] = extract_frames(data, list(range(n)))
        return cache[member]

    for member, rs in uses.items():
        tm = sh.members[member]
        frames = len(rs) > 1 and member.rsplit(".", 1)[-1].lower() in _TIFF_EXTS
        for fi, r in enumerate(rs):
            r[IS.CONTENT_TYPE] = content_type_of(member)
            r[IS.SOURCE_REF] = IS.make_ref(url, member, tm.data_offset, tm.size, frame_index=fi if frames else None)
            if not cfg.materialize:
                continue
            if tm.data is None:
                msg = f"member {member!r} has {tm.size} bytes, over max_member_size={cfg.max_member_size}"
                r[IS.MATERIALIZE_ERROR] = msg
                _fail(r, ErrorCode.MEMBER_TOO_LARGE, msg)
            elif frames:
                res = got_frames(member, tm.data, len(rs))[fi]
                if isinstance(res, IndexError):
                    r[IS.MATERIALIZE_ERROR] = f"{member!r}: {res}"
                    _fail(r, ErrorCode.MISSING_MEMBER, f"{member!r}: {res}")
                elif isinstance(res, Exception):
                    r[IS.MATERIALIZE_ERROR] = f"{member!r}: {type(res).__name__}: {res}"
                    _fail(r, ErrorCode.DECODE_ERROR, f"frame {fi} of {member!r} cannot be read ({type(res).__name__}: {res})")
                else:
                    r[IS.BINARY_CONTENT] = res
            else:
                r[IS.BINARY_CONTENT] = tm.data
    if sample_err is not None:
        for r in rows:  # the sample-level problem explains every row, whatever was found item by item
            r[S.STATUS] = Status.ERROR.value
            r[S.ERROR] = error_text(ErrorCode.SIDECAR_INVALID, sample_err)
    return rows


def read_shard(
    url: str, cfg: InterleavedReadConfig, fields: dict[str, str], item_fields: dict[str, str],
    storage_options: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Row dicts of one shard: samples in tar order, then unreferenced members and shard-level errors."""
    sh = _index_shard(url, cfg, storage_options)
    rows: list[dict[str, Any]] = []
    referenced: set[str] = set()
    json_names = [n for n in sh.order if _is_json(n, cfg)]
    seen: set[str] = set()
    for name in json_names:
        referenced.add(name)
        srows = _sample_rows(sh.members[name], sh, cfg, fields, item_fields, referenced)
        sid = srows[0][IS.SAMPLE_ID]
        if sid in seen:
            for r in srows:
                _fail(r, ErrorCode.DUPLICATE_KEY, f"sample_id {sid!r} appears again in {name!r}; the first one is kept")
        seen.add(sid)
        rows.extend(srows)
    for name in sh.order:
        if name in referenced:
            continue
        tm = sh.members[name]
        stem = name.split(".", 1)[0]
        owner = next((n for n in json_names if n.startswith(stem + ".")), None)
        r = _row(stem.rsplit("/", 1)[-1] if owner else None, IS.UNPLACED_POSITION, "image" if _is_image(name, cfg) else "metadata")
        r[IS.SOURCE_REF] = IS.make_ref(url, name, tm.data_offset, tm.size)
        r[IS.CONTENT_TYPE] = content_type_of(name)
        _fail(
            r,
            ErrorCode.SIDECAR_INVALID,
            f"member {name!r} is not referenced by any sample's JSON"
            + (f" (its sample {owner!r} does not list it)" if owner else " and no JSON member shares its key"),
        )
        rows.append(r)
    return rows + sh.rows


# --------------------------------------------------------------------------- frames
def items_meta(fields: dict[str, str], item_fields: dict[str, str]) -> pd.DataFrame:
    """The empty item table the WebDataset reader produces for these passthrough fields."""
    extra: dict[str, Any] = {k: _KIND_DTYPES[v] for k, v in fields.items()}
    for k, v in item_fields.items():
        extra.setdefault(k, _KIND_DTYPES[v])
    extra[JSON_COLUMN] = STRING
    return IS.empty_items(extra)


def _read_partition(
    url: str, cfg: InterleavedReadConfig, storage_options: dict[str, Any] | None, on_error: str, sort: bool = False,
    empty_documents: str = "keep",
) -> pd.DataFrame:
    fields, item_fields = dict(cfg.fields), dict(cfg.item_fields)
    rows = read_shard(url, cfg, fields, item_fields, storage_options)
    if on_error == "raise":
        for r in rows:
            if r[S.STATUS] == Status.ERROR.value:
                raise RuntimeError(
                    f"read_interleaved_webdataset (on_error='raise'): {url}: sample {r[IS.SAMPLE_ID]!r}, "
                    f"position {r[IS.POSITION]}: {r[S.ERROR]}"
                )
    df = rows_to_frame(rows, items_meta(fields, item_fields))
    return IS.arrange_items(_empty_documents(df, empty_documents), sort=sort)


def _empty_documents(df: pd.DataFrame, policy: str) -> pd.DataFrame:
    if policy == "keep":
        return df
    from nemo_frames.interleaved.ops import drop_empty_documents

    return drop_empty_documents(df)


def _check_policy(where: str, empty_documents: str) -> None:
    if empty_documents not in ("keep", "drop"):
        raise ValueError(f"{where}: empty_documents must be 'keep' or 'drop', found {empty_documents!r}")


def read_interleaved_webdataset(
    urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    materialize: bool = False,
    storage_options: dict[str, Any] | None = None,
    sample_id_field: str | None = "sample_id",
    texts_field: str = "texts",
    images_field: str = "images",
    image_member_field: str | None = None,
    fields: dict[str, Kind] | Literal["infer"] = "infer",
    item_fields: dict[str, Kind] | Literal["infer"] = "infer",
    image_extensions: Sequence[str] = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp", "gif"),
    max_member_size: int = 256 << 20,
    max_json_size: int = 16 << 20,
    on_error: Literal["record", "raise"] = "record",
    sort: bool = False,
    empty_documents: Literal["keep", "drop"] = "keep",
) -> dd.DataFrame:
    """Read MINT-1T-style WebDataset shards into an item table (one Dask partition per shard).

    Parameters
    ----------
    urls : str, path or list
        Local paths, globs, brace ranges, directories or fsspec URLs of ``.tar`` shards.
    materialize : bool
        Put image bytes in ``binary_content`` (frames of a shared multi-frame TIFF are
        re-saved as single-frame TIFFs). Default: leave them in place; ``source_ref`` holds
        the locator (``path``, ``member``, ``byte_offset``, ``byte_size``, ``frame_index``).
        A failed materialisation sets ``materialize_error`` and marks the row ``error``.
    sample_id_field : str or None
        JSON key holding the sample id (written by our writer and NeMo Curator's); when
        absent, the JSON member's name without extension is the id.
    texts_field, images_field : str
        JSON keys of the parallel lists.
    image_member_field : str, optional
        JSON key naming the image member(s) when the list entries are not member names.
    fields : dict or "infer"
        Kinds (``string``, ``int``, ``float``, ``bool``) of the top-level JSON keys that
        become metadata-row columns; ``"infer"`` looks at the first shard. Other keys
        (nested values, values of another kind) are kept, as one JSON object, in ``json``.
    item_fields : dict or "infer"
        Kinds of per-item values under the JSON key ``nf_item_fields``
        (``{column: [value at position 0, 1, ...]}``), as our writer stores them.
    image_extensions : sequence of str
        Extensions of image members.
    max_member_size, max_json_size : int
        Caps checked from tar headers before anything is read.
    on_error : {"record", "raise"}
        Record problems as error rows (default) or raise on the first.
    sort : bool
        Sort each partition's samples by ``sample_id``. Default: input order (shards in the
        order given, samples in tar order), each sample's rows by ``position``.
    empty_documents : {"keep", "drop"}
        A document with no text and no image (``texts``/``images`` empty or all null) is kept as
        its metadata row (default, as NeMo Curator), or marked ``filtered`` with reason
        ``empty_document``.

    Returns
    -------
    dask.dataframe.DataFrame
        The item table: the reserved columns, passthrough columns, ``json``, and the ledger
        ``nf_status``, ``nf_error``, ``nf_reason``, ``nf_input_position``; samples in input
        order (or sorted, see ``sort``); a partition never splits a sample.

    Examples
    --------
    Read shards, look at the documents, keep sharp images, and write Parquet:

    >>> from nemo_frames.interleaved import (read_interleaved_webdataset, score_items,
    ...     blur_filter, write_interleaved_parquet)  # doctest: +SKIP
    >>> items = read_interleaved_webdataset("mint/{00000..00009}.tar")  # doctest: +SKIP
    >>> items.head(8)[["sample_id", "position", "modality", "text_content"]]  # doctest: +SKIP
    >>> items.modality.value_counts().compute()  # doctest: +SKIP
    >>> scored = score_items(items, blur=True, qr=False)  # doctest: +SKIP
    >>> scored[scored.modality == "image"].blur_score.describe().compute()  # doctest: +SKIP
    >>> kept = blur_filter(scored, threshold=100.0)  # doctest: +SKIP
    >>> kept[kept.nf_status != "ok"][["sample_id", "nf_reason"]].head()  # doctest: +SKIP
    >>> write_interleaved_parquet(kept, "mint-parquet/")  # doctest: +SKIP
    """
    _check_policy("read_interleaved_webdataset", empty_documents)
    shards = expand_urls(urls, storage_options=storage_options)
    cfg = InterleavedReadConfig(
        materialize=materialize,
        sample_id_field=sample_id_field,
        texts_field=texts_field,
        images_field=images_field,
        image_member_field=image_member_field,
        image_extensions=tuple(e.lower().lstrip(".") for e in image_extensions),
        max_member_size=max_member_size,
        max_json_size=max_json_size,
    )
    if fields == "infer" or item_fields == "infer":
        f_inf, i_inf = infer_fields(shards[0].url, cfg, storage_options)
        fields = f_inf if fields == "infer" else fields
        item_fields = i_inf if item_fields == "infer" else item_fields
    for name, kind in {**fields, **item_fields}.items():  # type: ignore[dict-item]
        if kind not in _KIND_DTYPES:
            raise ValueError(f"read_interleaved_webdataset: field {name!r}: kind {kind!r} is not one of {sorted(_KIND_DTYPES)}")
        if name in IS.RESERVED or name in IS.LEDGER_TYPES or name == JSON_COLUMN:
            raise ValueError(f"read_interleaved_webdataset: field {name!r} is a reserved item-table column; rename it")
    cfg = dataclasses.replace(cfg, fields=tuple(sorted(fields.items())), item_fields=tuple(sorted(item_fields.items())))  # type: ignore[union-attr]
    meta = items_meta(dict(cfg.fields), dict(cfg.item_fields))
    return dd.from_map(
        _read_partition,
        [s.url for s in shards],
        cfg=cfg,
        storage_options=storage_options,
        on_error=on_error,
        sort=sort,
        empty_documents=empty_documents,
        meta=meta,
        label="read-interleaved-wds",
        enforce_metadata=False,
    )


# --------------------------------------------------------------------------- Parquet
def item_types_mapper(t: pa.DataType) -> Any:
    """Arrow → pandas dtypes for item tables: nullable integers and booleans (a column with nulls on
    content rows must not turn into floats or objects), ``large_string`` kept as such, the rest as
    :func:`nemo_frames.io.parquet.types_mapper`."""
    from nemo_frames.io.parquet import types_mapper

    if pa.types.is_boolean(t):
        return pd.BooleanDtype()
    if pa.types.is_integer(t):
        return pd.api.types.pandas_dtype(("Int" if pa.types.is_signed_integer(t) else "UInt") + str(t.bit_width))
    if pa.types.is_large_string(t):
        return pd.ArrowDtype(t)
    return types_mapper(t)


def _table_to_items(table: pa.Table, where: str) -> pd.DataFrame:
    from nemo_frames.ledger import ensure_ledger

    df = table.to_pandas(types_mapper=item_types_mapper, ignore_metadata=True)
    df = IS.canonicalize(df, where=where)
    df = ensure_ledger(df)
    if IS.INPUT_POSITION not in df.columns:
        df[IS.INPUT_POSITION] = df[IS.POSITION]
    return IS.canonicalize(df, where=where)


def _read_parquet_file(
    path: str, columns: list[str] | None, storage_options: dict[str, Any] | None, sort: bool = False,
    fill: pd.DataFrame | None = None, empty_documents: str = "keep",
) -> pd.DataFrame:
    """One file as an item table. ``columns`` is a request (Dask pushes the frame's columns down):
    it is cut to what this file has, so a file written by another tool, without our ledger columns,
    reads; the ledger is then added, and requested passthrough columns the file lacks are null."""
    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in IS.REQUIRED if c not in names]
        if missing:
            raise ValueError(
                f"read_interleaved_parquet: {path} has no reserved column(s) {missing} (found {names[:12]}); an item "
                "table file needs sample_id, position and modality (NeMo Curator's interleaved schema) — is this an "
                "interleaved Parquet file?"
            )
        cols = None if columns is None else [c for c in columns if c in names]
        table = pf.read(columns=cols)
    df = _table_to_items(table, f"read_interleaved_parquet({path})")
    if columns is not None:
        kinds = dict(fill.dtypes.items()) if fill is not None else {}
        for c in columns:
            if c not in df.columns:
                df[c] = pd.Series(pd.NA, index=df.index, dtype=kinds.get(c, "object"))
        df = df[[c for c in columns if c in df.columns] + [c for c in df.columns if c not in columns]]
    return IS.arrange_items(_empty_documents(df, empty_documents), sort=sort)


def _union_schema(files: Sequence[str], storage_options: dict[str, Any] | None) -> pa.Schema:
    """Every file's columns, in order of first appearance (the first type seen wins): files written by
    other tools, or from other partitions, need not share passthrough columns. Footers only."""
    fields: dict[str, pa.Field] = {}
    for path in files:
        with fsspec.open(path, "rb", **(storage_options or {})) as f:
            sch = pq.read_schema(f)
        if not all(c in sch.names for c in IS.REQUIRED):
            raise ValueError(
                f"read_interleaved_parquet: {path} has no reserved column(s) {[c for c in IS.REQUIRED if c not in sch.names]} "
                f"(found {sch.names[:12]}); an item table file needs sample_id, position and modality (NeMo Curator's "
                "interleaved schema) — is this an interleaved Parquet file?"
            )
        for fld in sch:
            fields.setdefault(fld.name, fld)
    return pa.schema(list(fields.values()))


def read_interleaved_parquet(
    path: str | os.PathLike[str] | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    sort: bool = False,
    empty_documents: Literal["keep", "drop"] = "keep",
) -> dd.DataFrame:
    """Read an item table from Parquet (ours or NeMo Curator's): one row per item, one partition per file.

    Reserved columns are cast to their canonical types (``large_*`` types are kept), passthrough
    columns come back as written, and the ledger columns are added (all ``ok``) when absent, so a
    file NeMo Curator wrote (reserved + passthrough columns only) reads as it is. A file without a
    required reserved column (``sample_id``, ``position``, ``modality``) raises ``ValueError``
    naming the file and the column; missing nullable reserved columns are null (as NeMo's reader).
    Each file must hold whole samples (both writers guarantee it). Rows keep the file's order
    (files in sorted name order), each sample's rows by ``position``, unless ``sort=True``.

    Parameters
    ----------
    path : str, path or list
        A directory of ``.parquet`` files, a glob, a file, or a list of them.
    columns : sequence of str, optional
        Passthrough columns to read (the reserved and ledger columns are always read).
    sort : bool
        Sort each file's samples by ``sample_id`` (default: keep the file's order).
    empty_documents : {"keep", "drop"}
        Keep a document that has only its metadata row (default), or mark it ``filtered``
        (``empty_document``).

    Examples
    --------
    >>> items = read_interleaved_parquet("mint-parquet/")  # doctest: +SKIP
    >>> items.groupby("sample_id").size().describe().compute()  # doctest: +SKIP
    """
    _check_policy("read_interleaved_parquet", empty_documents)
    files = [s.url for s in expand_urls(path, storage_options=storage_options, suffixes=(".parquet",))]
    files = [
        f for f in files
        if f.endswith(".parquet") and not f.endswith(".drops.parquet") and not f.rsplit("/", 1)[-1].startswith(("_", "."))
    ]
    if not files:
        raise FileNotFoundError(f"read_interleaved_parquet: no .parquet file under {path!r}")
    schema = _union_schema(files, storage_options)
    cols = None
    if columns is not None:
        keep = set(IS.RESERVED) | set(IS.LEDGER_TYPES) | set(columns)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"read_interleaved_parquet: columns {missing} are in none of the {len(files)} files (found {schema.names})")
        cols = [n for n in schema.names if n in keep]
        schema = pa.schema([schema.field(n) for n in cols])
    meta = _table_to_items(schema.empty_table(), "read_interleaved_parquet")
    return dd.from_map(
        _read_parquet_file, files, columns=cols if cols is None else list(meta.columns), storage_options=storage_options,
        sort=sort, fill=meta, empty_documents=empty_documents, meta=meta, label="read-interleaved-parquet", enforce_metadata=False,
    )


__all__ = [
    "ITEM_FIELDS_KEY",
    "InterleavedReadConfig",
    "extract_frame",
    "infer_fields",
    "read_interleaved_parquet",
    "read_interleaved_webdataset",
]
