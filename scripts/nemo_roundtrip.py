"""Round trip with NeMo Curator itself: NeMo's interleaved Parquet → nemo_frames → WebDataset → NeMo reads it.

NeMo Curator (``pip install nemo-curator``, CPU is enough) must live in a *separate* virtual
environment (it pins its own pandas / pyarrow / torch / ray); its interleaved stages are called
directly (``stage.process(task)``), without Ray. Usage::

    python3 -m uv venv -p python3.11 /tmp/nemo-venv && python3 -m uv pip install -p /tmp/nemo-venv/bin/python nemo-curator
    PYTHONPATH=. .venv/bin/python scripts/nemo_roundtrip.py --nemo-python /tmp/nemo-venv/bin/python

Steps: (1) we build MINT-1T-style shards from real photos (scikit-image); (2) NeMo's
``InterleavedWebdatasetReaderStage`` reads them (bytes materialised) and its
``InterleavedParquetWriterStage`` writes NeMo's Parquet; (3) ``read_interleaved_parquet`` +
``write_interleaved_webdataset`` turn that into shards; (4) NeMo's WebDataset reader reads our
shards back and every sample is compared with NeMo's Parquet: sample order, metadata-row
passthrough values, each text and each image's bytes and content type by position, and no
column NeMo did not write (no ``nf_*``). Prints the counts; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


# --------------------------------------------------------------------------- NeMo side (runs in NeMo's venv)
def _nemo_read_wds(tars: list[str], materialize: bool):
    from nemo_curator.stages.interleaved.io.readers.webdataset import InterleavedWebdatasetReaderStage
    from nemo_curator.tasks import FileGroupTask

    stage = InterleavedWebdatasetReaderStage(sample_id_field="sample_id", materialize_on_read=materialize)
    out = stage.process(FileGroupTask(dataset_name="rt", data=tars, _metadata={"source_files": tars}))
    return out if isinstance(out, list) else [out]


def nemo_make(src: str, out: str) -> None:
    """NeMo reads our source shards and writes its Parquet (one file per shard)."""
    from nemo_curator.stages.interleaved.io.writers.tabular import InterleavedParquetWriterStage

    writer = InterleavedParquetWriterStage(path=out, materialize_on_write=True)
    for tar in sorted(Path(src).glob("*.tar")):
        for batch in _nemo_read_wds([str(tar)], materialize=True):
            writer.process(batch)


def nemo_dump(src: str, dump: str) -> None:
    """NeMo reads shards; write what it sees (rows as JSON, bytes hex) for the comparison."""
    rows = []
    for tar in sorted(Path(src).glob("*.tar")):
        for batch in _nemo_read_wds([str(tar)], materialize=True):
            rows.extend(_jsonable(batch.to_pandas()))
    Path(dump).write_text(json.dumps(rows))


def nemo_dump_parquet(src: str, dump: str) -> None:
    from nemo_curator.stages.interleaved.io.readers.parquet import InterleavedParquetReaderStage
    from nemo_curator.tasks import FileGroupTask

    files = sorted(str(p) for p in Path(src).glob("*.parquet"))
    rows = []
    for f in files:  # one at a time: the order of files is the order of their source shards
        out = InterleavedParquetReaderStage().process(FileGroupTask(dataset_name="rt", data=[f], _metadata={}))
        for batch in out if isinstance(out, list) else [out]:
            rows.extend(_jsonable(batch.to_pandas()))
    Path(dump).write_text(json.dumps(rows))


def _jsonable(df) -> list[dict]:
    import math

    out = []
    for rec in df.to_dict("records"):
        r = {}
        for k, v in rec.items():
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = bytes(v).hex()
            elif v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("<NA>", "nan", "None"):
                v = None
            elif hasattr(v, "item"):
                v = v.item()
            r[k] = v
        out.append(r)
    return out


# --------------------------------------------------------------------------- our side
def build_source(d: Path) -> int:
    import io

    import cv2
    import skimage.data as sd
    from PIL import Image

    from tests.conftest import write_tar

    def jpg(rgb, size=96) -> bytes:
        h, w = rgb.shape[:2]
        s = size / max(h, w)
        small = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
        buf = io.BytesIO()
        Image.fromarray(small).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    pics = [jpg(p) for p in (sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket(), sd.hubble_deep_field())]
    d.mkdir(parents=True)
    n = 0
    for shard in range(3):
        members = []
        for i in range(4):
            sid = f"doc-{(7 * (shard * 4 + i)) % 13:02d}"  # not in sorted order: the order must survive
            if shard == 1 and i == 0:
                sid = "pdfs/ünï cödé:42.v1"
            texts, images = [], []
            for pos in range(i + 2):
                if pos % 2 == 0:
                    texts.append(f"text {pos} of {sid} — ünïcode ✓")
                    images.append(None)
                else:
                    name = f"{sid.replace('/', '_')}.{pos}.jpg"
                    members.append((name, pics[(shard + pos) % len(pics)]))
                    texts.append(None)
                    images.append(name)
            if shard == 2 and i == 3:
                texts, images = [], []  # an empty document: NeMo keeps it as its metadata row
            doc = {"sample_id": sid, "texts": texts, "images": images, "url": f"https://e.org/{shard}/{i}",
                   "page": shard * 10 + i, "score": 0.25 * i, "image_metadata": [{"page": i, "bbox": [0, 1, 2, 3]}]}
            members.append((f"{sid.replace('/', '_')}.json", json.dumps(doc, ensure_ascii=False).encode()))
            n += 1
        write_tar(d / f"{shard:05d}.tar", members)
    return n


def compare(a: list[dict], b: list[dict]) -> list[str]:
    """NeMo's Parquet rows (a) vs NeMo's reading of our shards (b)."""
    from collections import defaultdict

    problems = []

    def by_sample(rows):
        out, order = defaultdict(list), []
        for r in rows:
            if r["sample_id"] not in out:
                order.append(r["sample_id"])
            out[r["sample_id"]].append(r)
        return out, order

    sa, oa = by_sample(a)
    sb, ob = by_sample(b)
    if oa != ob:
        problems.append(f"sample order differs: {oa} vs {ob}")
    cols_a = set().union(*(r.keys() for r in a))
    cols_b = set().union(*(r.keys() for r in b))
    if cols_b - cols_a:
        problems.append(f"columns NeMo did not write appear: {sorted(cols_b - cols_a)}")
    passthrough = sorted(cols_a - {"sample_id", "position", "modality", "content_type", "text_content", "binary_content",
                                   "source_ref", "materialize_error"})
    for sid in oa:
        ra, rb = sa[sid], sb.get(sid, [])
        ma = [r for r in ra if r["modality"] == "metadata"]
        mb = [r for r in rb if r["modality"] == "metadata"]
        if len(ma) != 1 or len(mb) != 1:
            problems.append(f"{sid}: metadata rows {len(ma)} vs {len(mb)}")
            continue
        for c in passthrough:
            if ma[0].get(c) != mb[0].get(c):
                problems.append(f"{sid}: {c}: {ma[0].get(c)!r} vs {mb[0].get(c)!r}")
        ca = sorted((r["position"], r["modality"], r.get("text_content"), r.get("binary_content"), r.get("content_type"))
                    for r in ra if r["modality"] != "metadata")
        cb = sorted((r["position"], r["modality"], r.get("text_content"), r.get("binary_content"), r.get("content_type"))
                    for r in rb if r["modality"] != "metadata")
        if ca != cb:
            problems.append(f"{sid}: content differs ({len(ca)} vs {len(cb)} items)")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nemo-python", help="python of a venv with nemo-curator installed")
    ap.add_argument("--nemo-side", nargs=3, metavar=("STEP", "SRC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    args = ap.parse_args()
    if args.nemo_side:
        step, src, out = args.nemo_side
        {"make": nemo_make, "dump": nemo_dump, "dump-parquet": nemo_dump_parquet}[step](src, out)
        return 0
    if not args.nemo_python:
        ap.error("--nemo-python is required")
    from nemo_frames.interleaved import read_interleaved_parquet, write_interleaved_webdataset

    work = Path(args.keep or tempfile.mkdtemp(prefix="nemo-rt-"))

    def nemo(step: str, src: Path, out: Path) -> None:
        subprocess.run([args.nemo_python, __file__, "--nemo-side", step, str(src), str(out)], check=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(work), "RAY_DISABLE_IMPORT_WARNING": "1"})

    n_docs = build_source(work / "src")
    nemo("make", work / "src", work / "nemo-parquet")
    nemo("dump-parquet", work / "nemo-parquet", work / "a.json")
    items = read_interleaved_parquet(str(work / "nemo-parquet"))
    r = write_interleaved_webdataset(items, str(work / "ours-wds"))
    nemo("dump", work / "ours-wds", work / "b.json")
    a = json.loads((work / "a.json").read_text())
    b = json.loads((work / "b.json").read_text())
    problems = compare(a, b)

    def count(rows, m):
        return sum(r["modality"] == m for r in rows)

    print("| stage | samples | metadata rows | text items | image items |")
    print("|---|---:|---:|---:|---:|")
    print(f"| source shards (built here) | {n_docs} | | | |")
    for name, rows in (("NeMo Parquet (NeMo wrote, NeMo reads)", a), ("our WDS (NeMo reads)", b)):
        print(f"| {name} | {len({x['sample_id'] for x in rows})} | {count(rows, 'metadata')} | {count(rows, 'text')} "
              f"| {count(rows, 'image')} |")
    print(f"| nemo_frames write_interleaved_webdataset stats | {r.stats['samples_ok']} | | | |")
    print(f"\nfields compared per sample: passthrough {sorted({k for x in a for k in x} - {'sample_id', 'position', 'modality', 'content_type', 'text_content', 'binary_content', 'source_ref', 'materialize_error'})}, "
          "texts, image bytes and content types by position, sample order")
    if problems:
        print(f"\n{len(problems)} DIFFERENCES:")
        for p in problems[:40]:
            print("  ", p)
        return 1
    print("\nall samples identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
