"""The explorer's query layer against a real run: every answer checked against pandas on the same Parquet."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import yaml

pytest.importorskip("duckdb")

from nemo_frames.explore.data import ExploreError, Query, RunData


@pytest.fixture(scope="module")
def data(explore_run):
    d = RunData(explore_run)
    yield d
    d.close()


@pytest.fixture(scope="module")
def table(explore_run):
    t = pd.concat([pd.read_parquet(p) for p in sorted((explore_run / "table").glob("*.parquet"))], ignore_index=True)
    return t.reset_index(names="nf_row")


def keys(res):
    return [r["key"] for r in res["rows"]]


def test_grid_filters_match_pandas(data, table):
    res = data.samples(Query(status="filtered", reason="blur"), limit=100)
    assert sorted(keys(res)) == ["chelsea-blurred", "china-blurred", "coffee-blurred"] and res["total"] == 3
    err = data.samples(Query(error="decode_error"))
    assert err["total"] == int(table.nf_error.str.startswith("decode_error", na=False).sum()) >= 1
    txt = data.samples(Query(text="TEMPLE"), limit=100)
    assert sorted(keys(txt)) == sorted(table[table.caption.str.contains("temple", case=False, na=False)].key)
    rng = data.samples(Query(ranges={"blur_score": (100, 1000)}, sort="blur_score", desc=True), limit=100)
    want = table[(table.blur_score >= 100) & (table.blur_score <= 1000)].sort_values(["blur_score", "nf_row"], ascending=[False, True])
    assert keys(rng) == list(want.key) and rng["total"] == len(want)
    # Pages are consecutive slices of one order.
    p1, p2 = data.samples(Query(sort="width"), offset=0, limit=5), data.samples(Query(sort="width"), offset=5, limit=5)
    allrows = data.samples(Query(sort="width"), limit=10)
    assert keys(p1) + keys(p2) == keys(allrows)


def test_bad_queries_are_refused(data):
    for q in (Query(sort="nf_reason; DROP TABLE samples"), Query(ranges={"caption": (0, 1)}), Query(status="gone"),
              Query(ranges={"blur_score": ("1 OR 1=1", None)})):
        with pytest.raises(ExploreError):
            data.samples(q)
    with pytest.raises(ExploreError):
        data.whatif("blur_score", "=", 1)
    with pytest.raises(ExploreError) as ei:
        data.detail("10 OR 1=1")
    assert ei.value.status == 404
    assert data.samples(Query())["total"] == 32  # the table is intact


def test_queries_cannot_open_files(data):
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SET enable_external_access = true",
                "COPY samples TO '/tmp/nf-explore-leak.csv'"):
        with pytest.raises(Exception, match=r"(?i)permission|disabled|locked|configuration"):
            data.con.execute(sql)


def test_whatif_counts_and_neighbours(data, table):
    w = data.whatif("blur_score", ">=", 500, k=3)
    scope = table[table.blur_score.notna() & (table.nf_status != "error")]
    assert (w["scope"], w["keep"], w["remove"]) == (len(scope), int((scope.blur_score >= 500).sum()),
                                                    int((scope.blur_score < 500).sum()))
    above = [r["blur_score"] for r in w["kept_nearest"]]
    below = [r["blur_score"] for r in w["removed_nearest"]]
    assert above == sorted(scope.blur_score[scope.blur_score >= 500])[:3]
    assert below == sorted(scope.blur_score[scope.blur_score < 500], reverse=True)[:3]
    # With the run's own thresholds the run-level count is what the run kept; a stricter blur threshold keeps
    # the run's survivors that pass it.
    assert data.whatif("blur_score", ">=", 100)["run_keep"] == data.summary["kept"] == int((table.nf_status == "ok").sum())
    ok = table[table.nf_status == "ok"]
    assert w["run_keep"] == int((ok.blur_score >= 500).sum())
    low = data.whatif("qr_area_ratio", "<", 0.05)
    assert low["remove"] == int((scope.qr_area_ratio >= 0.05).sum()) == 3


def test_quantiles_match_numpy(data, table):
    import numpy as np

    q = data.quantiles("blur_score", n=10)
    want = np.quantile(table.blur_score.dropna().astype("float64"), np.linspace(0, 1, 11))
    np.testing.assert_allclose(q, want, rtol=1e-6)


def test_config_fragment_is_curate_yaml(data):
    from nemo_frames.config import config_from_dict

    text = data.config_fragment([{"column": "blur_score", "op": ">=", "value": 250, "name": "blur"},
                                 {"column": "qr_area_ratio", "op": "<", "value": 0.1, "name": "qr"}])
    cfg = config_from_dict({"input": {"urls": "x.tar"}, **yaml.safe_load(text)})
    assert [(f.column, f.op, f.value, f.label) for f in cfg.filters] == [
        ("blur_score", ">=", 250.0, "blur"), ("qr_area_ratio", "<", 0.1, "qr")]


def test_detail_has_sidecar_ledger_and_groups(data, table, explore_run):
    row = int(table.index[table.key == "china-cropped"][0])
    d = data.detail(row)
    assert d["row"]["key"] == "china-cropped" and d["row"]["nf_reason"].startswith("dedup_perceptual")
    assert d["sidecar"]["variant"] == "cropped" and d["sidecar"]["photo"] == "china"
    methods = {g["method"]: g for g in d["groups"]}
    assert set(methods) == {"perceptual", "semantic"}
    # Perceptual: the similarity of every member to this sample, from the pHashes in the table. Read exactly
    # with pyarrow: pandas turns a uint64 column with a null into float64, which rounds the low bits away.
    import pyarrow.parquet as pq

    t = pq.read_table(explore_run / "table", columns=["key", "phash"]).to_pylist()
    ph = {r["key"]: r["phash"] for r in t}
    for m in methods["perceptual"]["members"]:
        ham = bin(ph[m["key"]] ^ ph["china-cropped"]).count("1")
        assert m["similarity_to_this"] == pytest.approx(1 - ham / 64)
    assert next(m for m in methods["perceptual"]["members"] if m["key"] == "china-cropped")["similarity_to_this"] == 1
    sem = methods["semantic"]["members"]
    assert sem[0]["is_survivor"] and sem[0]["key"] == "china"
    assert all(0.9 < m["max_similarity"] <= 1.0 for m in sem)
    assert {m["key"] for m in sem} >= {"china", "china-cropped", "china-resized"}


def test_duplicate_groups_largest_first(data, explore_run):
    dup = pd.read_parquet(explore_run / "dedup" / "semantic.parquet")
    res = data.dup_groups("semantic", limit=50)
    sizes = [g["size"] for g in res["groups"]]
    assert res["total"] == dup.group_id.nunique() and sizes == sorted(sizes, reverse=True)
    assert sizes[0] == dup.group_id.value_counts().max()
    for g in res["groups"]:
        assert sum(m["is_survivor"] for m in g["members"]) == 1 and g["members"][0]["is_survivor"]
        assert all(m["nf_row"] is not None for m in g["members"])
    with pytest.raises(ExploreError):
        data.dup_groups("fuzzy")


def test_sweep_galleries_partition_the_pairs(data, explore_run):
    s = data.sweep_view(per_eps=100)
    dup = pd.read_parquet(explore_run / "dedup" / "semantic.parquet")
    removed = dup[~dup.is_survivor]
    assert [g["eps"] for g in s["galleries"]] == [0.001, 0.005, 0.02, 0.05, 0.1]
    assert [g["covered"] for g in s["galleries"]] == [True, True, True, True, False]
    shown = [p["key"] for g in s["galleries"] for p in g["pairs"]]
    assert sorted(shown) == sorted(removed.key)  # every removed pair appears at exactly one eps
    for g in s["galleries"]:
        assert all(1 - p["max_similarity"] <= g["eps"] + 1e-12 for p in g["pairs"])


def test_interleaved_document_in_order_with_drops(data):
    docs = data.documents()
    assert docs["total"] == 2 and docs["docs"][0]["sample_id"] == "story" and docs["docs"][0]["dropped"] == 1
    doc = data.document("story")
    kinds = [(i["modality"], i["nf_status"]) for i in doc["items"]]
    assert kinds == [("metadata", "ok"), ("image", "ok"), ("text", "ok"), ("image", "filtered"), ("text", "ok"),
                     ("image", "ok"), ("text", "ok")]
    assert doc["fields"]["url"] == "https://example.org/story"
    dropped = doc["items"][3]
    assert dropped["nf_reason"].startswith("blur:")
    assert data.item_image(dropped["nf_row"], 64)[:2] == b"\xff\xd8"


def test_images_are_jpegs_made_from_the_shards(data, table):
    from PIL import Image

    row = int(table.index[table.key == "astronaut"][0])
    thumb, full = data.image(row, 96), data.image(row, 4096)
    assert max(Image.open(io.BytesIO(thumb)).size) <= 96
    assert Image.open(io.BytesIO(full)).format == "JPEG" and max(Image.open(io.BytesIO(full)).size) == 512
    assert data.image(row, 96) is thumb  # cached
    err_row = int(table.index[table.nf_status == "error"][0])
    assert data.image(err_row, 96) is None  # the undecodable sample: no image, no exception


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="curate"):
        RunData(tmp_path)


def test_item_table_written_ok_only_reads_the_drops_beside_it(explore_run, tmp_path):
    from nemo_frames.interleaved import (
        blur_filter,
        read_interleaved_webdataset,
        score_items,
        write_interleaved_parquet,
    )

    items = read_interleaved_webdataset(str(explore_run.parent / "mint" / "00000.tar"))
    write_interleaved_parquet(blur_filter(score_items(items, blur=True, qr=False), 100.0), str(tmp_path / "items"),
                              materialize=True)  # rows="ok": a clean table, drops in *.drops.parquet
    d = RunData(explore_run, items=tmp_path / "items")
    try:
        doc = d.document("story")
        assert [i["nf_status"] for i in doc["items"] if i["modality"] == "image"] == ["ok", "filtered", "ok"]
        rows = [i["nf_row"] for i in doc["items"]]
        assert len(set(rows)) == len(rows)  # row ids stay unique across the two files
        kept_image = next(i for i in doc["items"] if i["modality"] == "image")
        assert d.item_image(kept_image["nf_row"], 64)[:2] == b"\xff\xd8"  # from binary_content in the Parquet
    finally:
        d.close()
