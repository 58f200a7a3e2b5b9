"""Safe weight-file loading shared by the CLIP embedder and the scoring heads.

Only two formats are read: safetensors (no code at all) and PyTorch files through
``torch.load(..., weights_only=True)`` (an unpickler restricted to tensors and plain
containers). Anything else (TorchScript archives, pickled modules) is refused with an
error that says how to convert the file, because unpickling a weight file can run code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "WeightsError",
    "load_state_dict_numpy",
    "load_state_dict_torch",
    "sha256_file",
    "verify_sha256",
]

_SAFETENSORS_SUFFIXES = (".safetensors",)


class WeightsError(RuntimeError):
    """Weights are missing, unsafe to load, of an unknown layout, or fail their sha256 pin."""


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """The hex sha256 of a file, read in chunks (weight files can be several GB).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str | None, *, what: str) -> str | None:
    """Check ``path`` against a pinned sha256; return the digest (``None`` when nothing is pinned).

    Raises
    ------
    WeightsError
        When the digest differs from ``expected``; the message names both digests and the file.
    """
    if expected is None:
        return None
    expected_norm = expected.strip().lower()
    if len(expected_norm) != 64 or any(c not in "0123456789abcdef" for c in expected_norm):
        raise ValueError(f"{what}: sha256 pin must be 64 hex characters, got {expected!r}")
    digest = sha256_file(path)
    if digest != expected_norm:
        raise WeightsError(
            f"{what}: sha256 mismatch for {path}: expected {expected_norm}, found {digest}. "
            "The file is not the pinned one (corrupt download, other version, or tampered); "
            "replace the file or update the `sha256=` pin if the new file is intended."
        )
    return digest


def _check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise WeightsError(f"{what}: weights file not found: {path}. Pass the path of an existing file.")


def load_state_dict_torch(path: str | os.PathLike[str], *, what: str = "weights") -> dict[str, Any]:
    """Load a state dict as CPU torch tensors, from safetensors or a ``weights_only`` torch file.

    A ``{"state_dict": ...}`` wrapper and a ``module.`` prefix (DataParallel) are removed.

    Raises
    ------
    WeightsError
        For a missing file, a TorchScript archive, or a pickle holding more than tensors.
    """
    p = Path(path)
    _check_exists(p, what)
    if p.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        sd: Any = load_file(str(p), device="cpu")
    else:
        import pickle

        import torch

        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as exc:
            msg = str(exc)
            kind = "a TorchScript archive" if "TorchScript" in msg else "objects other than tensors"
            raise WeightsError(
                f"{what}: refusing to load {p}: it holds {kind}, and loading it would need full "
                "unpickling (which can run code). Convert it once, on a trusted machine, to a plain "
                "state dict saved as .safetensors (or with torch.save(model.state_dict())), or use the "
                f"hub's safetensors file. Loader said: {msg.splitlines()[0] if msg else type(exc).__name__}"
            ) from exc
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise WeightsError(f"{what}: {p} does not contain a state dict (found {type(sd).__name__}).")
    sd = dict(sd)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_numpy(path: str | os.PathLike[str], *, what: str = "weights") -> dict[str, np.ndarray]:
    """Load a state dict as float32 numpy arrays; safetensors needs no torch, ``.pth`` imports it.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from safetensors.numpy import save_file
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_file({"weight": np.ones((1, 4), np.float32)}, str(p))
    >>> load_state_dict_numpy(p)["weight"].shape
    (1, 4)
    """
    p = Path(path)
    _check_exists(p, what)
    if p.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.numpy import load_file

        raw: Mapping[str, Any] = load_file(str(p))
        return {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}
    sd = load_state_dict_torch(p, what=what)
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):
            out[k] = v.detach().to("cpu").float().numpy()
        else:
            out[k] = np.asarray(v, dtype=np.float32)
    return out
