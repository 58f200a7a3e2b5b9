from __future__ import annotations

import hashlib

import dask.dataframe as dd
import pandas as pd
import pytest

from nemo_frames.dedup import drop_duplicates, exact_duplicates, summary
from tests._assets import assets_path


def _juicer_frame() -> pd.DataFrame:
    folder = assets_path("images-data-juicer")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    return pd.DataFrame(
        {
            "key": [p.stem for p in files],
            "content_hash": [hashlib.sha256(p.read_bytes()).hexdigest() for p in files],
        }
    ).astype("string[pyarrow]")


def _groups(t: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(g["key"]) for _, g in t.groupby("group_id")}


def test_data_juicer_exact_groups():
    t = exact_duplicates(_juicer_frame())
    assert _groups(t) == {frozenset({"img1", "img4"}), frozenset({"img2", "img5"}), frozenset({"img3", "img6", "img7"})}
    assert sorted(t.loc[t.is_survivor, "key"]) == ["img1", "img2", "img3"]
    assert (t.loc[~t.is_survivor].set_index("key")["matched_key"].to_dict()) == {
        "img4": "img1", "img5": "img2", "img6": "img3", "img7": "img3"
    }
    assert (t["max_similarity"] == 1.0).all() and (t["method"] == "exact").all()
    s = summary(t)
    assert s.loc[0, ["rows", "removed", "kept"]].tolist() == [13, 4, 9]


def test_dask_input_matches_pandas_and_ledger_rows_are_skipped():
    df = _juicer_frame()
    df["nf_status"] = pd.array(["error" if k == "img1" else "ok" for k in df["key"]], dtype="string[pyarrow]")
    t_pd = exact_duplicates(df)
    t_dd = exact_duplicates(dd.from_pandas(df, npartitions=3))
    pd.testing.assert_frame_equal(t_pd, t_dd)
    # img1 errored: img4 has no duplicate left
    assert "img1" not in set(t_pd["key"]) and "img4" not in set(t_pd["key"])


def test_max_score_policy_and_drop_duplicates_marks_rows():
    df = pd.DataFrame({"key": ["a", "b", "c", "d"], "content_hash": ["h", "h", "h", "x"], "aesthetic_score": [1.0, 5.0, 3.0, 9.0]})
    t = exact_duplicates(df, policy="max_score", score_column="aesthetic_score")
    assert t.loc[t.is_survivor, "key"].tolist() == ["b"]
    marked = drop_duplicates(df, t)
    assert len(marked) == 4  # marked, not dropped
    assert marked["nf_status"].tolist() == ["filtered", "ok", "filtered", "ok"]
    assert marked.loc[0, "nf_reason"] == "dedup_exact: duplicate of b (same content_hash)"
    ddf_marked = drop_duplicates(dd.from_pandas(df, npartitions=2), t).compute()
    assert ddf_marked["nf_status"].tolist() == marked["nf_status"].tolist()


def test_missing_column_and_duplicate_keys_are_explained():
    with pytest.raises(KeyError, match="content_hash"):
        exact_duplicates(pd.DataFrame({"key": ["a"]}))
    with pytest.raises(ValueError, match="not unique"):
        exact_duplicates(pd.DataFrame({"key": ["a", "a"], "content_hash": ["h", "h"]}))
