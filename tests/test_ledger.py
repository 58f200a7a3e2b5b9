"""The per-sample ledger: one final state per sample, first error and first reason win."""

import dask.dataframe as dd
import pandas as pd

from nemo_frames.ledger import counts, errors_table, mark_error, mark_filtered, merge_counts


def test_first_error_and_first_reason_win_and_counts_add_up():
    df = pd.DataFrame({"key": list("abcde")})
    df = mark_error(df, [True, False, False, False, False], "decode_error", "bad bytes")
    df = mark_error(df, [True, True, False, False, False], "fetch_error", "gone")
    df = mark_filtered(df, [True, True, False, False, True], "blur: blur_score=3 < 100")
    # d is dropped by both filters: the first reason stays; e is dropped by qr only.
    df = mark_filtered(df, [True, True, True, False, False], "qr: qr_area_ratio=0.3 >= 0.05")
    df = pd.concat([df, mark_filtered(pd.DataFrame({"key": ["f"]}), [True], "never")], ignore_index=True)
    assert df.nf_status.tolist() == ["error", "error", "filtered", "filtered", "filtered", "ok"]
    assert df.nf_error.tolist()[:2] == ["decode_error: bad bytes", "fetch_error: gone"]
    assert df.nf_reason.tolist()[2:5] == ["blur: blur_score=3 < 100", "blur: blur_score=3 < 100", "qr: qr_area_ratio=0.3 >= 0.05"]
    c = counts(df)
    assert c["by_status"] == {"error": 2, "filtered": 3, "ok": 1}
    assert c["errors_by_code"] == {"decode_error": 1, "fetch_error": 1}
    assert c["filtered_by_reason"] == {"blur": 2, "qr": 1}
    total = merge_counts([counts(df.iloc[:2]), counts(df.iloc[2:])])
    assert total == c


def test_errors_table_on_pandas_and_dask():
    df = mark_error(pd.DataFrame({"key": list("abc")}), [False, True, True], "decode_error", "bad")
    want = errors_table(df)
    got = errors_table(dd.from_pandas(df, npartitions=2)).compute()
    assert want.key.tolist() == got.key.tolist() == ["b", "c"]
    assert got.error_code.tolist() == ["decode_error", "decode_error"]
