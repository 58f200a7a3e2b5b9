"""Interleaved files as NeMo Curator writes and reads them: its Parquet in, clean files out, order, empty documents."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_frames.interleaved import (
    read_interleaved_parquet,
    read_interleaved_webdataset,
    write_interleaved_parquet,
    write_interleaved_webdataset,
)
from tests.conftest import write_tar
from tests.interleaved.conftest import doc_json, jpeg

# NeMo Curator's INTERLEAVED_SCHEMA (nemo_curator/tasks/interleaved.py), field by field.
NEMO_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False), pa.field("position", pa.int32(), nullable=False),
    pa.field("modality", pa.string(), nullable=False), pa.field("content_type", pa.string()),
    pa.field("text_content", pa.string()), pa.field("binary_content", pa.large_binary()),
    pa.field("source_ref", pa.string()), pa.field("materialize_error", pa.string()),
])


def nemo_parquet(path: Path, pics) -> list[str]:
    """An item-table file as NeMo's InterleavedParquetWriterStage leaves it: reserved columns reconciled to
    INTERLEAVED_SCHEMA, passthrough columns as inferred (``url`` string, ``page`` int64, dicts json.dumps-ed by its
    WebDataset reader), pandas ``to_parquet(index=False, compression="snappy", row_group_size=128_000)``;
    samples in the order its reader met them (not sorted). Returns the sample order."""
    names = sorted(pics)
    img = jpeg(pics[names[0]])
    rows = []
    order = ["zeta", "alpha", "mid"]
    for k, sid in enumerate(order):
        ref = json.dumps({"path": "/data/000.tar", "member": f"{sid}.json", "byte_offset": 512 * k, "byte_size": 100})
        rows.append({"sample_id": sid, "position": -1, "modality": "metadata", "content_type": "application/json",
                     "source_ref": ref, "url": f"https://e.org/{sid}", "page": k + 1,
                     "image_metadata": json.dumps([{"page": k}])})
        rows.append({"sample_id": sid, "position": 0, "modality": "text", "content_type": "text/plain",
                     "text_content": f"text of {sid}", "source_ref": ref})
        rows.append({"sample_id": sid, "position": 1, "modality": "image", "content_type": "image/jpeg",
                     "binary_content": img, "source_ref": None})
    cols = list(dict.fromkeys([*NEMO_SCHEMA.names, "url", "page", "image_metadata"]))
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    fields = [NEMO_SCHEMA.field(n) if n in NEMO_SCHEMA.names else table.schema.field(n) for n in table.column_names]
    table = table.cast(pa.schema(fields))
    table.to_pandas(types_mapper=pd.ArrowDtype).to_parquet(path, index=False, compression="snappy", row_group_size=128_000)
    return order


def test_read_nemo_parquet_without_ledger(tmp_path: Path, pics):
    order = nemo_parquet(tmp_path / "nemo.parquet", pics)
    assert not [c for c in pq.read_schema(tmp_path / "nemo.parquet").names if c.startswith("nf_")]
    df = read_interleaved_parquet(str(tmp_path / "nemo.parquet")).compute()
    assert (df.nf_status == "ok").all() and df.nf_error.isna().all()
    assert df.nf_input_position.tolist() == df.position.tolist()
    # passthrough columns keep their types; samples keep the file's order
    assert str(df.page.dtype) == "Int64" and df.loc[df.modality == "metadata", "page"].tolist() == [1, 2, 3]
    assert df.loc[df.modality == "metadata", "sample_id"].tolist() == order
    assert df.binary_content.iloc[2] is not None and len(df.binary_content.iloc[2]) > 100
    s = read_interleaved_parquet(str(tmp_path / "nemo.parquet"), sort=True).compute()
    assert s.loc[s.modality == "metadata", "sample_id"].tolist() == sorted(order)
    # a projection asks only for what the file has, plus the ledger
    p = read_interleaved_parquet(str(tmp_path / "nemo.parquet"), columns=["url"]).compute()
    assert "page" not in p.columns and p.url.notna().sum() == 3 and (p.nf_status == "ok").all()


def test_read_parquet_missing_reserved_column(tmp_path: Path, pics):
    nemo_parquet(tmp_path / "a.parquet", pics)
    t = pq.read_table(tmp_path / "a.parquet")
    pq.write_table(t.drop_columns(["modality"]), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"b\.parquet has no reserved column\(s\) \['modality'\]"):
        read_interleaved_parquet(str(tmp_path / "b.parquet"))
    # the second file of a directory: the message names it
    d = tmp_path / "dir"
    d.mkdir()
    (tmp_path / "a.parquet").rename(d / "0.parquet")
    (tmp_path / "b.parquet").rename(d / "1.parquet")
    with pytest.raises(ValueError, match=r"1\.parquet has no reserved column"):
        read_interleaved_parquet(str(d))


def test_written_files_carry_no_ledger(mint_shards, tmp_path: Path):
    src, _ = mint_shards
    items = read_interleaved_webdataset(str(src))
    w = write_interleaved_parquet(items, str(tmp_path / "pq"))
    data = [f for f in w.files if not f.endswith(".drops.parquet")]
    for f in data:
        names = pq.read_schema(tmp_path / "pq" / f).names
        assert not [c for c in names if c.startswith("nf_")], names
    # nested sidecar values come out nested, not as one JSON string
    t = pq.read_table(tmp_path / "pq" / data[0])
    assert pa.types.is_struct(t.schema.field("nested").type)
    doc0 = [v for v in t.column("nested").to_pylist() if v is not None]
    assert doc0 == [{"a": [1, 2]}]
    assert pa.types.is_list(pq.read_table(tmp_path / "pq" / data[1]).schema.field("image_metadata").type)
    assert sorted((tmp_path / "pq").glob("*.drops.parquet"))
    # ledger=False: no ledger file at all
    write_interleaved_parquet(items, str(tmp_path / "pq2"), ledger=False)
    assert not sorted((tmp_path / "pq2").glob("*.drops.parquet"))
    # our checkpoint keeps it inline
    write_interleaved_parquet(items, str(tmp_path / "ck"), rows="all")
    assert "nf_status" in pq.read_schema(sorted((tmp_path / "ck").glob("0000[0-9].parquet"))[0]).names
    # the WebDataset JSON: data and the user's fields only; nested values nested
    write_interleaved_webdataset(read_interleaved_parquet(str(tmp_path / "pq")), str(tmp_path / "wds"))
    docs = {}
    for t_ in sorted((tmp_path / "wds").glob("*.tar")):
        with tarfile.open(t_) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    d = json.loads(tf.extractfile(m).read())
                    docs[d["sample_id"]] = d
    assert not [k for d in docs.values() for k in d if k.startswith("nf_")]
    assert docs["doc0"]["nested"] == {"a": [1, 2]} and docs["pdfa"]["image_metadata"] == [{"page": 0}, {"page": 1}, {"page": 1}]


def test_order_kept_through_round_trip(mint_shards, tmp_path: Path):
    src, _ = mint_shards
    tar_order = ["doc0", "textonly", "imgonly", "many", "pdfs/ünï cödé:42.v1", "pdfa"]
    items = read_interleaved_webdataset(str(src))
    got = items.compute()
    assert got.loc[got.modality == "metadata", "sample_id"].tolist() == tar_order
    write_interleaved_parquet(items, str(tmp_path / "pq"))
    back = read_interleaved_parquet(str(tmp_path / "pq")).compute()
    assert back.loc[back.modality == "metadata", "sample_id"].tolist() == tar_order
    write_interleaved_webdataset(read_interleaved_parquet(str(tmp_path / "pq")), str(tmp_path / "wds"), samples_per_shard=2)
    again = read_interleaved_webdataset(str(tmp_path / "wds")).compute()
    assert again.loc[again.modality == "metadata", "sample_id"].tolist() == tar_order
    # each sample's rows stay in position order
    for _, g in again.groupby("sample_id", sort=False):
        assert g.position.tolist() == sorted(g.position.tolist())
    write_interleaved_webdataset(items, str(tmp_path / "sorted"), sort=True)
    s = read_interleaved_webdataset(str(tmp_path / "sorted")).compute()
    # sorted within each partition (one per input shard), partitions in order
    assert s.loc[s.modality == "metadata", "sample_id"].tolist() == [*sorted(tar_order[:5]), "pdfa"]


def test_empty_documents_kept_by_default(tmp_path: Path, pics):
    names = sorted(pics)
    d = tmp_path / "wds"
    d.mkdir()
    write_tar(d / "00000.tar", [
        ("full.0.jpg", jpeg(pics[names[0]])),
        ("full.json", doc_json(texts=[None, "words"], images=["full.0.jpg", None], url="u1")),
        ("blank.json", doc_json(texts=[], images=[], url="u2")),
        ("nulls.json", doc_json(texts=[None], images=[None], url="u3")),
    ])
    items = read_interleaved_webdataset(str(d)).compute()
    meta = items[items.modality == "metadata"]
    assert meta.sample_id.tolist() == ["full", "blank", "nulls"] and (meta.nf_status == "ok").all()
    w = write_interleaved_parquet(items, str(tmp_path / "pq"))
    assert w.stats["samples_ok"] == 3
    back = read_interleaved_parquet(str(tmp_path / "pq")).compute()
    assert back.loc[back.modality == "metadata", "url"].tolist() == ["u1", "u2", "u3"]
    write_interleaved_webdataset(back, str(tmp_path / "out"))
    with tarfile.open(sorted((tmp_path / "out").glob("*.tar"))[0]) as tf:
        blank = json.loads(tf.extractfile("blank.json").read())
    assert blank == {"sample_id": "blank", "texts": [], "images": [], "url": "u2"}
    # on request: dropped with a reason
    dropped = read_interleaved_webdataset(str(d), empty_documents="drop").compute()
    gone = dropped[dropped.nf_status == "filtered"]
    assert gone.sample_id.tolist() == ["blank", "nulls"]
    assert (gone.nf_reason == "empty_document: no text and no image item").all()
    p = read_interleaved_parquet(str(tmp_path / "pq"), empty_documents="drop").compute()
    assert p.loc[p.nf_status == "filtered", "sample_id"].tolist() == ["blank", "nulls"]


@pytest.mark.slow
def test_nemo_curator_round_trip(tmp_path: Path):
    """NeMo Curator itself (a separate venv named by $NEMO_CURATOR_PYTHON): its Parquet → us → WDS → it reads it."""
    import os
    import subprocess
    import sys

    nemo = os.environ.get("NEMO_CURATOR_PYTHON")
    if not nemo or not Path(nemo).exists():
        pytest.skip("set NEMO_CURATOR_PYTHON to the python of a venv with nemo-curator (see scripts/nemo_roundtrip.py)")
    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "nemo_roundtrip.py"), "--nemo-python", nemo,
                        "--keep", str(tmp_path / "rt")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all samples identical" in r.stdout and "| our WDS (NeMo reads) | 12 | 12 | 21 | 16 |" in r.stdout
