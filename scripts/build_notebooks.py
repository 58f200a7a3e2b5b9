"""Regenerate notebooks/quickstart.ipynb and notebooks/interleaved.ipynb from the cell sources below (no outputs).

Run from the repository root: ``python scripts/build_notebooks.py``. The notebooks are executed by
``tests/test_notebooks.py``; edit the cells here and regenerate, so the two stay in sync.
"""
import nbformat as nbf


def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return n

quick = [
"""md:# nemo_frames quickstart

Curate a small image-caption dataset step by step: read WebDataset shards into a dataframe, look at the columns,
score every image in one fused pass, filter with recorded reasons, look at what a filter drops, deduplicate, and
export new shards. The last cell runs the same thing as one call from a config.

The data: real photos that ship with scikit-image / scikit-learn plus derived near-duplicates, blurred copies,
exact copies, QR-code images and one broken JPEG (`scripts/make_demo_data.py`). Set `NF_QUICKSTART_DIR` to choose
where it is written (default: a temporary directory).""",
"""import os, sys, tempfile
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
WORK = Path(os.environ.get("NF_QUICKSTART_DIR") or tempfile.mkdtemp(prefix="nf-quickstart-"))
sys.path.insert(0, str(ROOT / "scripts"))
import make_demo_data

items = make_demo_data.samples()
make_demo_data.write_shards(WORK / "data", items, n_shards=3)
print(len(items), "samples written to", WORK / "data")""",
"""md:## 1. Read shards into a sample table

`read_webdataset` scans tar headers and sidecars: one row per sample, with *locators* (shard, offset, size) instead
of image bytes, so the table stays small. It is a Dask dataframe: one partition per shard.""",
"""import dask
import nemo_frames as nf

dask.config.set(scheduler="threads")  # small data: no cluster needed (see docs/clusters.md for one)
df = nf.read_webdataset(str(WORK / "data" / "{00000..00002}.tar"))
print(df.npartitions, "partitions")
df.head(5)[["key", "caption", "variant", "image_size", "nf_status"]]""",
"""df.dtypes""",
"""md:## 2. Score: one fused pass

Fetches bytes by locator, decodes each image once, and computes every requested operator: size, blur (variance of
the Laplacian), QR-code area ratio, pHash and content hash. CLIP embeddings and the LAION heads need weights: pass
`clip={"model": "ViT-L-14", "pretrained": "/path/to/weights.safetensors"}`, `aesthetic=...`, `nsfw=...`.""",
"""scored = nf.score(df, blur=True, qr=True, phash=True, content_hash=True).persist()
scored[["blur_score", "qr_area_ratio", "width", "height"]].describe().compute()""",
"""md:Errors are rows, not exceptions: the truncated JPEG is marked `decode_error` in the ledger.""",
"""errors = scored[scored.nf_status == "error"].compute()
errors[["key", "nf_error"]]""",
"""md:## 3. Filter, with a reason for every drop

Plain dataframe expressions work for exploring (`scored[scored.blur_score >= 100]`). The filter stages instead
*mark* rows they drop, so every dropped sample keeps a reason.""",
"""from nemo_frames.filters import apply_filters, blur, qr

filtered = apply_filters(scored, [blur(100), qr(0.05)]).persist()
filtered.nf_status.value_counts().compute()""",
"""from nemo_frames.report import show_grid

dropped = filtered[filtered.nf_status == "filtered"].compute().sort_values("key")
dropped[["key", "nf_reason"]]""",
"""md:### What the filters dropped""",
"""show_grid(dropped, columns=["blur_score", "qr_area_ratio"])""",
"""md:## 4. Deduplicate

Every dedup returns an explainable table first (`group_id`, `is_survivor`, `matched_key`, `max_similarity`);
`drop_duplicates` then marks the non-survivors in the ledger.""",
"""from nemo_frames.dedup import drop_duplicates, exact_duplicates, perceptual_duplicates

exact = exact_duplicates(filtered)
after_exact = drop_duplicates(filtered, exact).persist()
near = perceptual_duplicates(after_exact, threshold=12)
final = drop_duplicates(after_exact, near).persist()
near.sort_values(["group_id", "is_survivor"], ascending=[True, False])[
    ["key", "group_id", "is_survivor", "matched_key", "max_similarity"]].head(12)""",
"""final.nf_status.value_counts().compute()""",
"""show_grid(final[final.nf_status == "ok"].compute().sort_values("key"), columns=["blur_score"])""",
"""md:## 5. Export new shards

Only `ok` rows are written: GNU tars, a Parquet per shard, optional DALI index, and `_stats.json` with the counts.""",
"""res = nf.write_webdataset(final, str(WORK / "export"), samples_per_shard=8, write_index=True, progress=False)
print(res.samples, "samples in", len(res.shards), "shards")
sorted(p.name for p in (WORK / "export").iterdir())""",
"""md:## The same as one call

`nemo_frames.curate` runs scan → score (checkpointed to Parquet, resumable) → filters → dedup → export and writes a
summary and an HTML report. It accepts a YAML path (`nemo_frames.curate("configs/demo.yaml")`) or a dict / config
object.""",
"""result = nf.curate({
    "input": {"urls": str(WORK / "data" / "{00000..00002}.tar")},
    "output": str(WORK / "run"),
    "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 2}},
    "score": {"clip": None, "qr": True},
    "filters": [{"blur": 100}, {"qr": 0.05}],
    "dedup": {"exact": True, "perceptual": {"threshold": 12}},
    "export": {"samples_per_shard": 8},
}, progress=False)
{k: result.summary[k] for k in ("samples_in", "kept", "filtered_by_reason", "errors_by_code")}""",
"""print("report:", result.report)""",
]

inter = [
"""md:# Interleaved documents (MINT-1T / OBELICS shape)

An interleaved document is a sequence of text and image items. nemo_frames holds it as an **item table**: one row
per item, grouped by `sample_id`, ordered by `position` (−1 is the sample's metadata row). Its reserved columns
match NeMo Curator's interleaved Parquet, so data moves between both tools. Definitions: `docs/interleaved.md`.

This notebook builds a few documents from real photos, writes them as MINT-1T-style WebDataset shards, reads them
back as an item table, scores and filters images (blur, QR, image-to-text ratio), and writes the result.""",
"""import io, json, os, tarfile, tempfile
from pathlib import Path
import sys

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
WORK = Path(os.environ.get("NF_INTERLEAVED_DIR") or tempfile.mkdtemp(prefix="nf-interleaved-"))
sys.path.insert(0, str(ROOT / "scripts"))
import make_demo_data

by_key = {s["key"]: s for s in make_demo_data.samples()}

# Three documents: text and images interleaved; one has a blurred photo, one a QR code.
docs = {
    "doc-cats": ["Our cat Chelsea.", "chelsea", "She likes coffee too.", "coffee-blurred"],
    "doc-space": ["Launch day!", "rocket", "The crew:", "astronaut", "rocket-qr"],
    "doc-garden": ["Flowers from the garden, and the temple we visited afterwards.", "flower", "china"],
}
(WORK / "mint").mkdir(parents=True, exist_ok=True)
with tarfile.open(WORK / "mint" / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
    def add(name, data):
        ti = tarfile.TarInfo(name); ti.size = len(data); tar.addfile(ti, io.BytesIO(data))
    for sid, parts in docs.items():
        texts, images = [], []
        for i, p in enumerate(parts):
            if p in by_key:
                member = f"{sid}.{i}.jpg"
                add(member, by_key[p]["jpg"])
                texts.append(None); images.append(member)
            else:
                texts.append(p); images.append(None)
        add(f"{sid}.json", json.dumps({"sample_id": sid, "texts": texts, "images": images, "url": f"https://example.org/{sid}"}).encode())
print(sorted(p.name for p in (WORK / "mint").iterdir()))""",
"""md:## Read: one row per item""",
"""import dask
from nemo_frames.interleaved import read_interleaved_webdataset

dask.config.set(scheduler="threads")
items = read_interleaved_webdataset(str(WORK / "mint" / "*.tar"))
table = items.compute()
table[["sample_id", "position", "modality", "text_content", "content_type", "nf_status"]]""",
"""md:## Score the image items (decode once: blur, QR)

`score_items` fetches image bytes by `source_ref`, decodes each once, and adds `blur_score` / `qr_area_ratio` on
image rows. With CLIP weights, `clip=ClipConfig(...)` adds image and text embeddings for the alignment filter.""",
"""from nemo_frames.interleaved import score_items

scored = score_items(items, blur=True, qr=True).persist()
s = scored.compute()
s[s.modality == "image"][["sample_id", "position", "blur_score", "qr_area_ratio"]]""",
"""md:## Filter images, then documents by image-to-text ratio

Image filters drop image items (never text); the remaining positions of a document are renumbered 0..k−1. The
ratio filter keeps documents whose images ÷ words is within `[min, max]`.""",
"""from nemo_frames.interleaved import blur_filter, image_text_ratio_filter, qr_filter, kept_items, dropped_items

filtered = image_text_ratio_filter(qr_filter(blur_filter(scored, threshold=100.0), threshold=0.05),
                                   min_ratio=0.0, max_ratio=0.5)
out = filtered.compute()
out[["sample_id", "position", "modality", "nf_status", "nf_reason"]]""",
"""dropped_items(filtered).compute()[["sample_id", "modality", "nf_reason"]]""",
"""md:## Write: MINT-1T-style shards and item-table Parquet""",
"""from nemo_frames.interleaved import write_interleaved_parquet, write_interleaved_webdataset

w1 = write_interleaved_webdataset(filtered, str(WORK / "out-wds"), samples_per_shard=10)
w2 = write_interleaved_parquet(filtered, str(WORK / "out-parquet"))
print(w1)
print(w2)""",
"""back = read_interleaved_webdataset(str(WORK / "out-wds" / "*.tar")).compute()
back[["sample_id", "position", "modality", "text_content"]]""",
]
nbf.write(nb(quick), "notebooks/quickstart.ipynb")
nbf.write(nb(inter), "notebooks/interleaved.ipynb")
