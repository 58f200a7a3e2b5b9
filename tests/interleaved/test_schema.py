"""canonicalize: casts reserved columns, keeps large types and passthrough columns, reports what cannot be cast."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from nemo_frames.interleaved import canonicalize, sort_items, validate
from nemo_frames.interleaved.schema import ItemSchemaError


def test_casts_reserved_and_keeps_passthrough():
    df = pd.DataFrame({"sample_id": ["b", "a", "a"], "position": [0, 0, -1], "modality": ["text", "image", "metadata"],
                       "text_content": ["x", None, None], "binary_content": [None, b"\xff\xd8", None],
                       "extra": [1.5, 2.5, None], "obj": [{"a": 1}, None, [1]]})
    out = canonicalize(df)
    assert str(out.position.dtype) == "Int32"
    assert out.binary_content.dtype == pd.ArrowDtype(pa.large_binary())
    assert out.extra.dtype == "float64" and out.obj.tolist() == df.obj.tolist()
    assert out.source_ref.isna().all() and out.materialize_error.isna().all()
    s = sort_items(out)
    assert list(zip(s.sample_id, s.position, strict=True)) == [("a", -1), ("a", 0), ("b", 0)]
    assert validate(s) == []


def test_large_string_is_not_downcast():
    df = pd.DataFrame({"sample_id": ["a"], "position": [0], "modality": ["text"]})
    df["text_content"] = pd.Series(pa.array(["big"], pa.large_string()), dtype=pd.ArrowDtype(pa.large_string()))
    assert canonicalize(df).text_content.dtype == pd.ArrowDtype(pa.large_string())


@pytest.mark.parametrize(
    ("col", "values", "found"),
    [("position", [0.5], "float64"), ("position", [2**40], "int64"), ("text_content", [3], "int64"),
     ("binary_content", [12], "int64")],
)
def test_uncastable_reports_column_expected_found(col, values, found):
    df = pd.DataFrame({"sample_id": ["a"], "position": [0], "modality": ["text"]})
    df[col] = values
    with pytest.raises(ItemSchemaError, match=rf"column '{col}': expected .* found {found}"):
        canonicalize(df)


def test_missing_required_column():
    with pytest.raises(ValueError, match="no \\['modality'\\]"):
        canonicalize(pd.DataFrame({"sample_id": ["a"], "position": [0]}))


def test_validate_finds_bad_tables():
    df = canonicalize(pd.DataFrame({"sample_id": ["a", "a", "a"], "position": [-1, 0, 0],
                                    "modality": ["metadata", "text", "video"]}))
    problems = validate(df)
    assert any("unknown modality" in p for p in problems) and any("share a position" in p for p in problems)
