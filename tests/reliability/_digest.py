"""Digest of an export directory: tar / index / stats bytes, and Parquet content (output paths made relative)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def export_digest(path: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for p in sorted(path.iterdir()):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            df = pq.read_table(p).to_pandas()
            if "source" in df.columns:  # the export's own shard path: compare its name only
                df["source"] = df["source"].map(lambda s: None if s is None else Path(str(s)).name)
            out[p.name] = hashlib.sha256(df.to_json(orient="split").encode()).hexdigest()
        else:
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
