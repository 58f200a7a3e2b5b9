"""A small local checkpoint store for dedup intermediates (cluster assignments, per-cluster results).

Commit protocol (DESIGN §7), local-filesystem version: write to a temporary name in the
destination directory, ``os.replace`` it into place, then exclusive-create a ``<name>.done``
JSON marker with counts. Only names with a marker count as written, so a run killed at any
point resumes at the granularity of the names used (one input partition, one cluster).

Each stage directory records the hash of the settings it was written under and refuses to be
resumed under different settings. The project-wide commit module (``nemo_frames.io.commit``)
may replace this one; the interface is kept to ``is_done`` / ``write_parquet_atomic`` /
``mark_done`` / ``read_done`` for that reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_TMP_PREFIX = ".nf-tmp-"
CONFIG_FILE = "_config.json"


def config_hash(config: dict[str, Any]) -> str:
    """A stable sha256 (hex, 16 chars) of a JSON-serialisable settings dict."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpoint:
    """One stage directory of atomically written files with done markers.

    Parameters
    ----------
    root : str or Path
        The checkpoint directory (created if missing).
    stage : str
        Sub-directory for this stage (``"assign"``, ``"pairs"`` …).
    config : dict
        The settings that determine this stage's output. A directory written under other
        settings raises ``ValueError`` instead of silently mixing results.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> ck = Checkpoint(tempfile.mkdtemp(), "demo", {"eps": 0.01})
    >>> ck.is_done("part-0")
    False
    >>> _ = ck.write_parquet_atomic(pd.DataFrame({"a": [1]}), "part-0")
    >>> ck.mark_done("part-0", {"rows": 1})
    >>> ck.is_done("part-0"), ck.read_done("part-0")["rows"]
    (True, 1)
    """

    def __init__(self, root: str | os.PathLike[str], stage: str, config: dict[str, Any]) -> None:
        self.dir = Path(root) / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.hash = config_hash(config)
        self._claim_config()
        self.sweep_temporaries()

    # ----------------------------------------------------------------- config
    def _claim_config(self) -> None:
        path = self.dir / CONFIG_FILE
        body = json.dumps({"config_hash": self.hash, "config": self.config}, sort_keys=True, default=str, indent=1)
        with contextlib.suppress(FileExistsError), open(path, "x") as f:
            f.write(body)
            return
        found = json.loads(path.read_text())
        if found.get("config_hash") != self.hash:
            old = found.get("config", {})
            new = json.loads(json.dumps(self.config, default=str))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"dedup checkpoint {self.dir} was written with different settings "
                f"(config hash {found.get('config_hash')} vs {self.hash}; differing: {diff}). "
                "Refusing to resume: pass a new checkpoint_dir, or delete this directory to start over."
            )

    # ----------------------------------------------------------------- paths
    def path(self, name: str, suffix: str = ".parquet") -> Path:
        return self.dir / f"{name}{suffix}"

    def _marker(self, name: str) -> Path:
        return self.dir / f"{name}.done"

    def sweep_temporaries(self) -> int:
        """Delete temporaries left by killed writers; returns how many."""
        n = 0
        for p in self.dir.rglob(f"{_TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
        return n

    # ----------------------------------------------------------------- protocol
    def is_done(self, name: str) -> bool:
        """Whether ``name`` was fully written and marked."""
        return self._marker(name).exists()

    def _atomic(self, dest: Path, write: Any) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{dest.name}"
        try:
            write(tmp)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return dest

    def write_parquet_atomic(self, data: Any, name: str) -> Path:
        """Write a pandas frame or Arrow table to ``<stage>/<name>.parquet`` atomically."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        return self._atomic(self.path(name), lambda p: pq.write_table(table, p, compression="lz4"))

    def write_npy_atomic(self, array: np.ndarray, name: str) -> Path:
        """Write a numpy array to ``<stage>/<name>.npy`` atomically."""

        def write(p: Path) -> None:
            with open(p, "wb") as f:
                np.save(f, array)

        return self._atomic(self.path(name, ".npy"), write)

    def mark_done(self, name: str, info: dict[str, Any]) -> None:
        """Exclusive-create the ``.done`` marker with ``info`` (counts, checksums).

        A marker that already exists (a retried task that finished twice) is left as is:
        outputs are deterministic, so both attempts wrote the same bytes.
        """
        with contextlib.suppress(FileExistsError), open(self._marker(name), "x") as f:
            json.dump({"config_hash": self.hash, **info}, f, sort_keys=True, default=str)

    def read_done(self, name: str) -> dict[str, Any]:
        """The ``info`` stored by :meth:`mark_done`."""
        return json.loads(self._marker(name).read_text())
