"""Precomputed image embeddings carried in the JSON sidecars, as the ``embedding`` column.

Datasets that were embedded once (clip-retrieval, or a dataset's own pipeline) often ship the
vector with each sample. Reading it back skips the CLIP pass entirely and lets semantic dedup run
on those vectors: the sidecar field (a JSON list of numbers) becomes ``embedding``
(``list<float32>``, L2-normalised, its length checked against one dimension for the whole
dataset), and the field is removed from the ``json`` column so the table does not carry the vector
twice. A sample whose field is malformed (not a list of finite numbers, or another length) is
recorded as ``sidecar_invalid`` with what was expected and found; a sample without the field
keeps a null embedding (semantic dedup then records it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.io.jsonsafe import dumps_sorted, loads_strict
from nemo_frames.ledger import ensure_ledger, mark_error

EMBEDDING_DTYPE = pd.ArrowDtype(pa.list_(pa.float32()))


@dataclass(frozen=True)
class SidecarEmbeddingConfig:
    """Where the vector is and how long it must be.

    Parameters
    ----------
    field : str
        The sidecar JSON field that holds the vector (a list of numbers).
    dim : int
        The expected length; every row is checked against it.
    """

    field: str
    dim: int


class SidecarEmbedding:
    """Stage: move a sidecar JSON vector into the ``embedding`` column.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"key": ["a", "b"], "json": ['{"emb": [3, 4], "x": 1}', '{"emb": [1]}']})
    >>> out = SidecarEmbedding(SidecarEmbeddingConfig("emb", 2)).transform(df)
    >>> [None if v is pd.NA else [round(x, 2) for x in v] for v in out["embedding"].tolist()]
    [[0.6, 0.8], None]
    >>> out["json"].tolist(), out["nf_error"].tolist()[1][:40]
    (['{"x":1}', <NA>], 'sidecar_invalid: sidecar field emb: expe')
    """

    name = "sidecar_embedding"

    def __init__(self, config: SidecarEmbeddingConfig) -> None:
        self.config = config

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        field, dim = self.config.field, self.config.dim
        df = ensure_ledger(df)
        texts = df[S.JSON] if S.JSON in df.columns else pd.Series(None, index=df.index, dtype=object)
        n = len(df)
        flat = np.zeros((n, dim), dtype=np.float32)
        present = np.zeros(n, dtype=bool)
        bad: dict[int, str] = {}
        new_json: list[Any] = []
        for i, text in enumerate(texts.tolist()):
            if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
                new_json.append(None)
                continue
            try:
                doc = loads_strict(text)
            except ValueError:
                try:
                    # A json column written by another tool may hold NaN: read it, and let the vector
                    # check below name the bad value.
                    doc = json.loads(text)
                except ValueError:
                    new_json.append(text)
                    continue
            if not isinstance(doc, dict) or field not in doc:
                new_json.append(text)
                continue
            value = doc.pop(field)
            new_json.append(dumps_sorted(doc) if doc else None)
            why = _check_vector(value, dim)
            if why:
                bad[i] = f"sidecar field {field}: expected a list of {dim} finite numbers, found {why}"
                continue
            vec = np.asarray(value, dtype=np.float32)
            norm = float(np.linalg.norm(vec))
            if norm > 0:
                vec = vec / norm
            flat[i] = vec
            present[i] = True
        offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
        arr = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)), mask=pa.array(~present))
        out = df.assign(**{
            S.EMBEDDING: pd.Series(pd.arrays.ArrowExtensionArray(arr), index=df.index),
            S.JSON: pd.Series(new_json, index=df.index, dtype=pd.StringDtype("pyarrow")),
        })
        if bad:
            mask = np.zeros(n, dtype=bool)
            mask[list(bad)] = True
            msgs = pd.Series([bad.get(i, "") for i in range(n)], index=df.index)
            out = mark_error(out, mask, S.ErrorCode.SIDECAR_INVALID, msgs)
        return out

    def meta(self, meta: pd.DataFrame) -> pd.DataFrame:
        return self.transform(meta.iloc[:0])


def _check_vector(value: Any, dim: int) -> str | None:
    if not isinstance(value, list):
        return f"a {type(value).__name__}"
    if len(value) != dim:
        return f"a list of {len(value)}"
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"the value {v!r} in the list"
    return None


def infer_dim(shard: str, field: str, *, json_extensions: tuple[str, ...] = ("json",),
              storage_options: dict[str, Any] | None = None, max_size: int = 1 << 24) -> int | None:
    """The length of ``field`` in the first sidecar of ``shard`` that has it (``None`` if none of 200 has)."""
    from nemo_frames.io.webdataset import iter_json_sidecars

    docs = iter_json_sidecars(shard, lambda name: name.rsplit(".", 1)[-1].lower() in json_extensions,
                              max_size=max_size, storage_options=storage_options)
    for doc in docs:
        v = doc.get(field)
        if isinstance(v, list) and v:
            return len(v)
    return None


def sidecar_embeddings(ddf: Any, field: str, dim: int) -> Any:
    """Add ``embedding`` from the sidecar field ``field`` to a pandas or Dask sample table.

    Examples
    --------
    >>> import nemo_frames as nf  # doctest: +SKIP
    >>> df = sidecar_embeddings(nf.read_webdataset("shards/*.tar"), "clip_emb", 768)  # doctest: +SKIP
    """
    stage = SidecarEmbedding(SidecarEmbeddingConfig(field, dim))
    if isinstance(ddf, pd.DataFrame):
        return stage.transform(ddf)
    return ddf.map_partitions(stage.transform, meta=stage.meta(ddf._meta))
