"""Folders written by img2dataset and clip-retrieval, laid out exactly as those tools write them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nemo_frames as nf
from tests.conftest import assets_path, write_tar

# img2dataset's Parquet schema for a --url_col url --caption_col caption run with the default
# --compute_hash sha256 and --extract_exif: input columns, then what the downloader appends.
I2D_SCHEMA = pa.schema([
    pa.field("url", pa.string()), pa.field("caption", pa.string()), pa.field("key", pa.string()),
    pa.field("status", pa.string()), pa.field("error_message", pa.string()),
    pa.field("width", pa.int32()), pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()), pa.field("original_height", pa.int32()),
    pa.field("exif", pa.string()), pa.field("sha256", pa.string()),
])


def write_img2dataset_shard(folder: Path, shard_id: int, rows: list[dict], jpegs: dict[str, bytes]) -> None:
    """One shard as img2dataset's WebDatasetSampleWriter leaves it: {n}.tar (successes only; jpg, txt and an
    indent-4 json per sample), {n}.parquet (every input row, failures included) and {n}_stats.json."""
    name = f"{shard_id:05d}"
    members, recs = [], []
    for i, r in enumerate(rows):
        key = f"{shard_id:05d}{i:04d}"
        ok = r["status"] == "success"
        img = jpegs[r["photo"]] if ok else None
        meta = {"url": r["url"], "caption": r["caption"], "key": key, "status": r["status"],
                "error_message": r.get("error_message"), "width": 256 if ok else None, "height": 192 if ok else None,
                "original_width": 320 if ok else None, "original_height": 240 if ok else None,
                "exif": json.dumps({"Image Make": "Canon"}) if ok else None,
                "sha256": hashlib.sha256(img).hexdigest() if ok else None}
        recs.append(meta)
        if ok:
            members += [(f"{key}.jpg", img), (f"{key}.txt", r["caption"].encode()),
                        (f"{key}.json", json.dumps(meta, indent=4).encode())]
    write_tar(folder / f"{name}.tar", members)
    pq.write_table(pa.Table.from_pylist(recs, schema=I2D_SCHEMA), folder / f"{name}.parquet")
    st = _count_status(rows)
    stats = {"count": len(rows), "successes": st.get("success", 0),
             "failed_to_download": st.get("failed_to_download", 0), "failed_to_resize": st.get("failed_to_resize", 0),
             "duration": 1.5, "start_time": 1.7e9, "end_time": 1.7e9 + 1.5,
             "status_dict": {r["error_message"]: 1 for r in rows if r.get("error_message")} | {"success": st.get("success", 0)},
             "config": {"output_format": "webdataset"}}
    (folder / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))


def _count_status(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


@pytest.fixture
def i2d_folder(tmp_path: Path, jpegs) -> Path:
    d = tmp_path / "laion"
    d.mkdir()
    names = sorted(jpegs)
    write_img2dataset_shard(d, 0, [
        {"url": "https://x.org/a.jpg", "caption": "an astronaut", "status": "success", "photo": names[0]},
        {"url": "https://x.org/gone.jpg", "caption": "a lost cat", "status": "failed_to_download",
         "error_message": "HTTP Error 404: Not Found"},
        {"url": "https://x.org/c.jpg", "caption": "a coffee cup", "status": "success", "photo": names[2]},
        {"url": "https://x.org/bad.jpg", "caption": "a broken file", "status": "failed_to_resize",
         "error_message": "image file is truncated"},
    ], jpegs)
    write_img2dataset_shard(d, 1, [
        {"url": "https://x.org/e.jpg", "caption": "a rocket", "status": "success", "photo": names[3]},
        {"url": "https://x.org/f.jpg", "caption": "a motorbike", "status": "success", "photo": names[4]},
    ], jpegs)
    return d


def test_read_img2dataset_folder_as_is(i2d_folder: Path):
    df = nf.read_img2dataset(str(i2d_folder))
    assert df.npartitions == 2
    pdf = df.compute().reset_index(drop=True)
    # Rows in img2dataset's order (the Parquet's), failures in place.
    assert pdf["key"].tolist() == ["000000000", "000000001", "000000002", "000000003", "000010000", "000010001"]
    assert pdf["nf_status"].tolist() == ["ok", "error", "ok", "error", "ok", "ok"]
    assert pdf.loc[1, "nf_error"] == "fetch_error: img2dataset failed_to_download: HTTP Error 404: Not Found"
    assert pdf.loc[3, "nf_error"] == "decode_error: img2dataset failed_to_resize: image file is truncated"
    assert pdf.loc[1, "url"] == "https://x.org/gone.jpg" and pdf.loc[1, "caption"] == "a lost cat"
    assert "status" not in pdf.columns and "error_message" not in pdf.columns
    ok = pdf[pdf.nf_status == "ok"]
    assert ok["caption"].tolist() == ["an astronaut", "a coffee cup", "a rocket", "a motorbike"]
    assert ok["width"].tolist() == [256] * 4 and ok["original_height"].tolist() == [240] * 4
    assert ok["image_member"].tolist() == [f"{k}.jpg" for k in ok["key"]]
    # The locators are real: the fetched bytes hash to img2dataset's sha256.
    from nemo_frames.io.fetch import fetch_image_bytes

    got = fetch_image_bytes(ok)["image_bytes"].tolist()
    assert [hashlib.sha256(bytes(b)).hexdigest() for b in got] == ok["sha256"].tolist()
    # The ledger counts agree with img2dataset's own stats.
    st = nf.img2dataset_stats(str(i2d_folder))
    assert st["count"] == len(pdf) and st["successes"] == len(ok) and st["shards"] == 2
    codes = pdf.nf_error.dropna().str.split(":").str[0].value_counts().to_dict()
    assert codes == {"fetch_error": st["failed_to_download"], "decode_error": st["failed_to_resize"]}


def test_read_img2dataset_success_missing_from_tar(i2d_folder: Path, tmp_path: Path):
    # Shard 1's tar loses its last sample (a partial copy): the Parquet still says success.
    import tarfile

    t = i2d_folder / "00001.tar"
    with tarfile.open(t) as src:
        keep = [(m.name, src.extractfile(m).read()) for m in src.getmembers() if not m.name.startswith("000010001")]
    write_tar(t, keep)
    pdf = nf.read_img2dataset(str(i2d_folder)).compute().reset_index(drop=True)
    row = pdf[pdf.key == "000010001"].iloc[0]
    assert row.nf_status == "error" and row.nf_error.startswith("missing_member: img2dataset reports '000010001'")


def test_read_img2dataset_real_shard(tmp_path: Path):
    """The real img2dataset-style shard from the assets, with the Parquet img2dataset writes beside it."""
    src = assets_path("images-nemo-curator", "00000.tar")
    d = tmp_path / "real"
    d.mkdir()
    shutil.copy(src, d / "00000.tar")
    caption = "A wine bottle outfitted with two forks in its cork and a duck head on top."
    pq.write_table(pa.table({"id": ["0"], "caption": [caption], "key": ["0"], "status": ["success"],
                             "error_message": pa.array([None], pa.string())}), d / "00000.parquet")
    pdf = nf.read_img2dataset(str(d)).compute()
    assert pdf["key"].tolist() == ["0"] and pdf["nf_status"].tolist() == ["ok"]
    assert pdf["caption"].iloc[0].startswith("A wine bottle")
    assert pdf["image_size"].iloc[0] == 225807


def write_clip_retrieval_output(folder: Path, parts: list[tuple[list[str], np.ndarray]]) -> None:
    """clip-retrieval inference's NumpyWriter layout: img_emb/img_emb_{i}.npy (float16, normalised) and
    metadata/metadata_{i}.parquet (image_path, caption, then the flattened json metadata), row-aligned."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    for i, (keys, emb) in enumerate(parts):
        e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        np.save(folder / "img_emb" / f"img_emb_{i}.npy", e.astype(np.float16))
        pd.DataFrame({"image_path": keys, "caption": [f"caption of {k}" for k in keys],
                      "url": [f"https://x.org/{k}.jpg" for k in keys]}).to_parquet(folder / "metadata" / f"metadata_{i}.parquet")


def test_clip_retrieval_embeddings_join(i2d_folder: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    e0, e1 = rng.normal(size=(2, 512)), rng.normal(size=(2, 512))
    emb_dir = tmp_path / "emb"
    # clip-retrieval saw only the successful samples, in tar order.
    write_clip_retrieval_output(emb_dir, [(["000000000", "000000002"], e0), (["000010000", "000010001"], e1)])
    emb = nf.read_clip_retrieval_embeddings(str(emb_dir), dim=512)
    assert emb.npartitions == 2
    got = emb.compute()
    assert got["key"].tolist() == ["000000000", "000000002", "000010000", "000010001"]
    from nemo_frames.backend import to_matrix

    m = to_matrix(got["embedding"])
    want = np.vstack([e0, e1])
    want = (want / np.linalg.norm(want, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(m, want)
    df = nf.join_embeddings(nf.read_img2dataset(str(i2d_folder)), emb).compute().reset_index(drop=True)
    assert df["key"].tolist()[:2] == ["000000000", "000000001"]  # order and partitions kept
    has = df["embedding"].notna()
    assert has.tolist() == [True, False, True, False, True, True]
    np.testing.assert_array_equal(to_matrix(df.loc[has, "embedding"]), want)


def test_clip_retrieval_checks(tmp_path: Path):
    rng = np.random.default_rng(1)
    d = tmp_path / "emb"
    write_clip_retrieval_output(d, [(["a", "b", "c"], rng.normal(size=(3, 64)))])
    with pytest.raises(ValueError, match="embedding dimension 64, expected 768"):
        nf.read_clip_retrieval_embeddings(str(d), dim=768).compute()
    # Not normalised (e.g. another tool's raw features): refused, or renormalised on request.
    np.save(d / "img_emb" / "img_emb_0.npy", (3 * rng.normal(size=(3, 64))).astype(np.float16))
    with pytest.raises(ValueError, match="not unit vectors"):
        nf.read_clip_retrieval_embeddings(str(d)).compute()
    from nemo_frames.backend import to_matrix

    m = to_matrix(nf.read_clip_retrieval_embeddings(str(d), renormalize=True).compute()["embedding"])
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-6)
    # Rows out of step with the metadata.
    np.save(d / "img_emb" / "img_emb_0.npy", np.eye(2, 64, dtype=np.float16))
    with pytest.raises(ValueError, match="2 embeddings but 3 rows"):
        nf.read_clip_retrieval_embeddings(str(d)).compute()
