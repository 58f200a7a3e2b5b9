"""Column names, Arrow types and ledger vocabulary shared by every stage.

Add new columns here, never ad hoc in a stage: the sample table and the item
table are contracts with the files other tools read (DESIGN §2).
"""

from __future__ import annotations

import enum
from typing import Final

import pandas as pd
import pyarrow as pa

# --------------------------------------------------------------------------- sample table
KEY: Final = "key"
SOURCE: Final = "source"
IMAGE_MEMBER: Final = "image_member"
IMAGE_OFFSET: Final = "image_offset"
IMAGE_SIZE: Final = "image_size"
CAPTION: Final = "caption"
JSON: Final = "json"
IMAGE_BYTES: Final = "image_bytes"  # only inside one fused task, never persisted by default
WIDTH: Final = "width"
HEIGHT: Final = "height"
EMBEDDING: Final = "embedding"
TEXT_EMBEDDING: Final = "text_embedding"
AESTHETIC_SCORE: Final = "aesthetic_score"
NSFW_SCORE: Final = "nsfw_score"
CLIP_SCORE: Final = "clip_score"
BLUR_SCORE: Final = "blur_score"
QR_AREA_RATIO: Final = "qr_area_ratio"
PHASH: Final = "phash"
CONTENT_HASH: Final = "content_hash"
STATUS: Final = "nf_status"
ERROR: Final = "nf_error"
REASON: Final = "nf_reason"  # why a row was filtered (stage: detail); null when kept or errored
MEMBERS: Final = "nf_members"  # JSON object {extension: [offset, size]} of every member of the sample

EMBEDDING_TYPE: Final = pa.list_(pa.float32())

SAMPLE_ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    KEY: pa.string(),
    SOURCE: pa.string(),
    IMAGE_MEMBER: pa.string(),
    IMAGE_OFFSET: pa.int64(),
    IMAGE_SIZE: pa.int64(),
    CAPTION: pa.string(),
    JSON: pa.string(),
    MEMBERS: pa.string(),
    IMAGE_BYTES: pa.binary(),
    WIDTH: pa.int32(),
    HEIGHT: pa.int32(),
    EMBEDDING: EMBEDDING_TYPE,
    TEXT_EMBEDDING: EMBEDDING_TYPE,
    AESTHETIC_SCORE: pa.float32(),
    NSFW_SCORE: pa.float32(),
    CLIP_SCORE: pa.float32(),
    BLUR_SCORE: pa.float32(),
    QR_AREA_RATIO: pa.float32(),
    PHASH: pa.uint64(),
    CONTENT_HASH: pa.string(),
    STATUS: pa.string(),
    ERROR: pa.string(),
    REASON: pa.string(),
}


# --------------------------------------------------------------------------- ledger
class Status(str, enum.Enum):
    """Where a sample ended: exactly one of these per input sample (DESIGN §7)."""

    OK = "ok"
    FILTERED = "filtered"
    ERROR = "error"


class ErrorCode(str, enum.Enum):
    """Per-sample error codes. ``nf_error`` holds ``"<code>: <message>"``."""

    SHARD_UNREADABLE = "shard_unreadable"
    SHARD_TRUNCATED = "shard_truncated"
    NOT_A_TAR = "not_a_tar"
    DECOMPRESSION_BOMB = "decompression_bomb"
    MEMBER_TOO_LARGE = "member_too_large"
    BAD_KEY = "bad_key"
    DUPLICATE_KEY = "duplicate_key"
    MISSING_MEMBER = "missing_member"
    UNSAFE_MEMBER = "unsafe_member"
    SIDECAR_INVALID = "sidecar_invalid"
    CAPTION_INVALID = "caption_invalid"
    FETCH_ERROR = "fetch_error"
    DECODE_ERROR = "decode_error"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    MODEL_ERROR = "model_error"
    MATERIALIZE_ERROR = "materialize_error"
    INVALID_EMBEDDING = "invalid_embedding"  # null, NaN/inf or zero-norm embedding: semantic dedup cannot compare it


def error_text(code: ErrorCode | str, message: str) -> str:
    """Format an ``nf_error`` value: ``"<code>: <message>"``."""
    code = code.value if isinstance(code, ErrorCode) else str(code)
    return f"{code}: {message}"


def error_code(text: str | None) -> str | None:
    """The code part of an ``nf_error`` value (``None`` for a missing value)."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return None
    return str(text).split(":", 1)[0]


def arrow_dtype(t: pa.DataType) -> pd.api.extensions.ExtensionDtype | str:
    """The pandas dtype we use for an Arrow type: numpy dtypes for flat numerics, ArrowDtype otherwise."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pd.ArrowDtype(t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pd.ArrowDtype(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pd.StringDtype("pyarrow")
    return t.to_pandas_dtype()


def pandas_dtype(column: str) -> object:
    """The pandas dtype of a reserved sample-table column."""
    return arrow_dtype(SAMPLE_ARROW_TYPES[column])


# --------------------------------------------------------------------------- item table (interleaved)
SAMPLE_ID: Final = "sample_id"
POSITION: Final = "position"
MODALITY: Final = "modality"
CONTENT_TYPE: Final = "content_type"
TEXT_CONTENT: Final = "text_content"
BINARY_CONTENT: Final = "binary_content"
SOURCE_REF: Final = "source_ref"
MATERIALIZE_ERROR: Final = "materialize_error"

ITEM_ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    SAMPLE_ID: pa.string(),
    POSITION: pa.int32(),
    MODALITY: pa.string(),
    CONTENT_TYPE: pa.string(),
    TEXT_CONTENT: pa.string(),
    BINARY_CONTENT: pa.large_binary(),
    SOURCE_REF: pa.string(),
    MATERIALIZE_ERROR: pa.string(),
}
ITEM_REQUIRED: Final = (SAMPLE_ID, POSITION, MODALITY)
MODALITIES: Final = ("text", "image", "metadata")
