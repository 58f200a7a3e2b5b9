"""LAION scoring heads on CLIP embeddings, in numpy.

- :class:`AestheticHead`: LAION aesthetic predictor V2 (``sac+logos+ava1-l14-linearMSE.pth``:
  768→1024→128→64→16→1 with no activations, so one affine map), its ``reluMSE`` sibling, and the
  V1 linear heads (``sa_0_4_vit_{l_14,b_32,b_16}_linear.pth``).
- :class:`NsfwHead`: LAION CLIP-based NSFW detector (autokeras), including the categorical
  lookup the original applies to a few embedding dimensions; reads the converted safetensors
  layout and NeMo Curator's ``.pth`` layout.

The heads are a few small matrix products, so they run in numpy (float64 accumulation) and need
torch only to read a ``.pth`` file. Inputs are the L2-normalised CLIP image embeddings the heads
were trained on; they are not re-normalised here (the NSFW lookup depends on exact values).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nemo_frames.models.weights import WeightsError, load_state_dict_numpy, verify_sha256

__all__ = ["AestheticHead", "NsfwHead", "WeightsError"]

PathLike = str | os.PathLike[str]

# Known layouts of the improved-aesthetic-predictor nn.Sequential: indices of the Linear layers.
_LINEAR_MSE_INDICES = (0, 2, 4, 6, 7)  # Linear, Dropout, ... , Linear, Linear: no activation
_RELU_MSE_INDICES = (0, 3, 6, 9, 11)  # Linear, ReLU, Dropout, ... , Linear, ReLU, Linear


def _as_matrix(emb: Any, dim: int, who: str) -> np.ndarray:
    if hasattr(emb, "detach"):  # torch tensor
        emb = emb.detach().to("cpu").float().numpy()
    x = np.asarray(emb)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(
            f"{who}.score: expected embeddings of shape (N, {dim}), found {x.shape}. "
            f"This head was trained on {dim}-d CLIP embeddings; use the head that matches the CLIP model."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{who}.score: expected float embeddings, found {x.dtype}")
    return x


def _load(path: PathLike, sha256: str | None, who: str) -> dict[str, np.ndarray]:
    verify_sha256(path, sha256, what=who)
    return load_state_dict_numpy(path, what=who)


@dataclass
class AestheticHead:
    """LAION aesthetic score (≈1–10) of L2-normalised CLIP image embeddings.

    Build it with :meth:`from_file`. ``layers`` are ``(weight (out, in), bias (out,))`` pairs
    applied in order, with ``activation`` between them (none for V2 ``linearMSE`` and V1).

    Attributes
    ----------
    kind : str
        ``"v2-mlp"`` (improved-aesthetic-predictor) or ``"v1-linear"``.
    dim : int
        Input embedding dimension (768 for ViT-L/14, 512 for ViT-B/32 and B/16).

    Examples
    --------
    >>> import numpy as np
    >>> head = AestheticHead([(np.full((1, 4), 2.0), np.array([1.0]))], kind="v1-linear")
    >>> head.score(np.array([[0.5, 0.5, 0.5, 0.5]], np.float32))
    array([5.], dtype=float32)
    """

    layers: list[tuple[np.ndarray, np.ndarray]]
    kind: str = "v2-mlp"
    activation: Literal["none", "relu"] = "none"
    source: str | None = None
    _affine: tuple[np.ndarray, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.layers = [
            (np.asarray(w, np.float64), np.asarray(b, np.float64).reshape(-1)) for w, b in self.layers
        ]
        for (w1, _), (w2, _) in zip(self.layers, self.layers[1:], strict=False):
            if w2.shape[1] != w1.shape[0]:
                raise WeightsError(f"AestheticHead: layer shapes do not chain: {w1.shape} then {w2.shape}")
        if self.layers[-1][0].shape[0] != 1:
            raise WeightsError(
                f"AestheticHead: last layer must output 1 value, has {self.layers[-1][0].shape}"
            )
        if self.activation == "none":
            # Without activations (dropout is identity at inference) the MLP is one affine map;
            # folding it in float64 turns 768×1024+… multiply-adds per row into 768.
            w = np.eye(self.layers[0][0].shape[1])
            b = np.zeros(self.layers[0][0].shape[1])
            for lw, lb in self.layers:
                w, b = lw @ w, lw @ b + lb
            self._affine = (np.ascontiguousarray(w[0]), float(b[0]))

    @property
    def dim(self) -> int:
        return int(self.layers[0][0].shape[1])

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        *,
        sha256: str | None = None,
        activation: Literal["auto", "none", "relu"] = "auto",
    ) -> AestheticHead:
        """Load V2 (``layers.{i}.weight``) or V1 (``weight``/``bias``) weights; the layout is detected.

        Parameters
        ----------
        path : str or PathLike
            ``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.
        sha256 : str, optional
            Pin of the file; a mismatch raises :class:`WeightsError`.
        activation : {"auto", "none", "relu"}
            Activation between the MLP's linears. ``"auto"`` knows the two published layouts
            (``linearMSE`` keys ``layers.{0,2,4,6,7}``: none; ``reluMSE`` keys
            ``layers.{0,3,6,9,11}``: ReLU) and refuses to guess for others.

        Examples
        --------
        >>> head = AestheticHead.from_file("sac+logos+ava1-l14-linearMSE.pth")  # doctest: +SKIP
        >>> head.kind, head.dim  # doctest: +SKIP
        ('v2-mlp', 768)
        """
        who = f"AestheticHead({Path(path).name})"
        sd = _load(path, sha256, who)
        if set(sd) == {"weight", "bias"}:
            return cls([(sd["weight"], sd["bias"])], kind="v1-linear", activation="none", source=str(path))
        # Accept a wrapper prefix (e.g. "mlp.layers.0.weight") as long as all keys share it.
        idx: dict[int, dict[str, np.ndarray]] = {}
        for k, v in sd.items():
            m = re.fullmatch(r"(?:.*\.)?layers\.(\d+)\.(weight|bias)", k)
            if m is None:
                raise WeightsError(
                    f"{who}: unknown key {k!r}; expected V2 keys 'layers.<i>.weight/bias' or V1 keys "
                    f"'weight'/'bias' (found {sorted(sd)[:6]})."
                )
            idx.setdefault(int(m.group(1)), {})[m.group(2)] = v
        order = tuple(sorted(idx))
        if activation == "auto":
            if order == _LINEAR_MSE_INDICES:
                activation = "none"
            elif order == _RELU_MSE_INDICES:
                activation = "relu"
            else:
                raise WeightsError(
                    f"{who}: Linear layers at indices {order} match neither the linearMSE layout "
                    f"{_LINEAR_MSE_INDICES} nor the reluMSE layout {_RELU_MSE_INDICES}; pass "
                    "activation='none' or 'relu' to say which activation sits between them."
                )
        layers = []
        for i in order:
            if set(idx[i]) != {"weight", "bias"}:
                raise WeightsError(f"{who}: layer {i} lacks a weight or bias (has {sorted(idx[i])})")
            layers.append((idx[i]["weight"], idx[i]["bias"]))
        return cls(layers, kind="v2-mlp", activation=activation, source=str(path))

    def score(self, emb: Any) -> np.ndarray:
        """Aesthetic scores, float32 ``(N,)``, of embeddings ``(N, dim)`` (numpy or torch).

        Examples
        --------
        >>> import numpy as np
        >>> head = AestheticHead([(np.ones((1, 2)), np.zeros(1))], kind="v1-linear")
        >>> head.score(np.array([[1.0, 2.0], [3.0, 4.0]])).tolist()
        [3.0, 7.0]
        """
        x = _as_matrix(emb, self.dim, "AestheticHead").astype(np.float64, copy=False)
        if self._affine is not None:
            w, b = self._affine
            return (x @ w + b).astype(np.float32)
        h = x
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)
        return h[:, 0].astype(np.float32)


@dataclass
class NsfwHead:
    """LAION CLIP-based NSFW probability (0 = safe, 1 = NSFW) of CLIP image embeddings.

    The forward pass of the original autokeras model: for the categorical dimensions, replace the
    value by its index in a word list (the float64 value formatted with C ``"%f"``, index =
    position + 1, unknown → 0); then ``(x - mean) / std``; ReLU after every linear but the last;
    sigmoid.

    Attributes
    ----------
    mean, std : ndarray
        Input normalisation, shape ``(dim,)``.
    linears : list of (weight (out, in), bias (out,))
    vocab : dict[int, dict[str, int]]
        Categorical dimension → string → index; empty when the lookup is off.

    Examples
    --------
    >>> import numpy as np
    >>> head = NsfwHead(np.zeros(2), np.ones(2), [(np.ones((1, 2)), np.zeros(1))])
    >>> head.score(np.array([[0.0, 0.0]])).tolist()
    [0.5]
    """

    mean: np.ndarray
    std: np.ndarray
    linears: list[tuple[np.ndarray, np.ndarray]]
    vocab: dict[int, dict[str, int]] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, np.float64).reshape(-1)
        self.std = np.asarray(self.std, np.float64).reshape(-1)
        self.linears = [
            (np.asarray(w, np.float64), np.asarray(b, np.float64).reshape(-1)) for w, b in self.linears
        ]
        d = self.mean.shape[0]
        if self.std.shape != (d,) or self.linears[0][0].shape[1] != d:
            raise WeightsError(
                f"NsfwHead: mean {self.mean.shape}, std {self.std.shape} and first linear "
                f"{self.linears[0][0].shape} disagree on the input dimension"
            )
        if self.linears[-1][0].shape[0] != 1:
            raise WeightsError(f"NsfwHead: last linear must output 1 value, has {self.linears[-1][0].shape}")
        bad = [c for c in self.vocab if not 0 <= c < d]
        if bad:
            raise WeightsError(f"NsfwHead: categorical dimensions {bad} are outside 0..{d - 1}")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def categorical_lookup(self) -> bool:
        """Whether the original model's categorical lookup is applied."""
        return bool(self.vocab)

    @staticmethod
    def load_vocab(path: PathLike) -> dict[int, dict[str, int]]:
        """Read a ``*_vocab.json`` (``int_columns``, ``vocab[dim]`` = list of strings, index = position + 1)."""
        raw = json.loads(Path(path).read_text())
        first = int(raw.get("first_vocab_index", 1))
        if int(raw.get("oov_index", 0)) != 0:
            raise WeightsError(
                f"NsfwHead: {path}: only oov_index 0 is supported, found {raw.get('oov_index')}"
            )
        cols = [int(c) for c in raw.get("int_columns", raw["vocab"].keys())]
        return {c: {s: i + first for i, s in enumerate(raw["vocab"][str(c)])} for c in cols}

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        *,
        vocab: PathLike | Literal["auto"] | None = "auto",
        sha256: str | None = None,
    ) -> NsfwHead:
        """Load the converted safetensors (``mean``, ``std``, ``linears.{i}``) or NeMo Curator's ``.pth``.

        NeMo Curator's layout (``norm.mean``, ``norm.variance``, ``linear_{1..4}``) is mapped by key
        name (``std = sqrt(variance)``).

        Parameters
        ----------
        path : str or PathLike
            Weights file.
        vocab : path, "auto" or None
            Word lists of the categorical dimensions. ``"auto"`` uses ``<stem>_vocab.json`` next to
            the weights and, if there is none, warns and scores without the lookup (what NeMo
            Curator does; scores then differ slightly from the original model). ``None`` turns the
            lookup off silently.
        sha256 : str, optional
            Pin of the weights file.

        Examples
        --------
        >>> head = NsfwHead.from_file("converted/clip_autokeras_binary_nsfw_vit_l14.safetensors")  # doctest: +SKIP
        >>> head.dim, head.categorical_lookup  # doctest: +SKIP
        (768, True)
        """
        p = Path(path)
        who = f"NsfwHead({p.name})"
        sd = _load(p, sha256, who)
        if "mean" in sd and "std" in sd:
            mean, std = sd["mean"], sd["std"]
            lin = {
                int(m.group(1)): m.group(2)
                for k in sd
                if (m := re.fullmatch(r"linears\.(\d+)\.(weight|bias)", k))
            }
            order = sorted(set(lin))
            linears = [(sd[f"linears.{i}.weight"], sd[f"linears.{i}.bias"]) for i in order]
            extra = (
                set(sd) - {"mean", "std"} - {f"linears.{i}.{t}" for i in order for t in ("weight", "bias")}
            )
        elif "norm.mean" in sd and "norm.variance" in sd:
            mean, std = sd["norm.mean"], np.sqrt(sd["norm.variance"].astype(np.float64))
            order = sorted(
                {int(m.group(1)) for k in sd if (m := re.fullmatch(r"linear_(\d+)\.(weight|bias)", k))}
            )
            linears = [(sd[f"linear_{i}.weight"], sd[f"linear_{i}.bias"]) for i in order]
            extra = (
                set(sd)
                - {"norm.mean", "norm.variance", "norm.count"}
                - {f"linear_{i}.{t}" for i in order for t in ("weight", "bias")}
            )
        else:
            raise WeightsError(
                f"{who}: unknown layout (keys {sorted(sd)[:8]}); expected 'mean', 'std', 'linears.<i>.*' "
                "(converted LAION detector) or 'norm.mean', 'norm.variance', 'linear_<i>.*' (NeMo Curator)."
            )
        if not linears or extra:
            raise WeightsError(f"{who}: no linear layers or unexpected keys {sorted(extra)[:6]}")

        table: dict[int, dict[str, int]] = {}
        if vocab == "auto":
            sibling = p.with_name(p.stem + "_vocab.json")
            if sibling.is_file():
                table = cls.load_vocab(sibling)
            else:
                warnings.warn(
                    f"{who}: no {sibling.name} beside the weights, so the original model's categorical "
                    "lookup is off and scores differ slightly from LAION's detector (as in NeMo Curator). "
                    "Pass vocab=<path to *_vocab.json>, or vocab=None to silence this.",
                    stacklevel=2,
                )
        elif vocab is not None:
            table = cls.load_vocab(vocab)
        return cls(mean, std, linears, vocab=table, source=str(p))

    def _features(self, x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=np.float64)  # copy: the lookup writes into it
        for col, words in self.vocab.items():
            # C "%f" and Python "%f" both round the exact binary value to 6 decimals, so the strings
            # match the ones TensorFlow's as_string produced when the word lists were built.
            x[:, col] = [words.get("%f" % v, 0) for v in x[:, col].tolist()]  # noqa: UP031 - C printf semantics
        return x

    def score(self, emb: Any) -> np.ndarray:
        """NSFW probabilities, float32 ``(N,)``, of embeddings ``(N, dim)`` (numpy or torch).

        Pass embeddings at the precision they are stored in (e.g. float16 as LAION stores them):
        the categorical lookup reads exact values.
        """
        x = _as_matrix(emb, self.dim, "NsfwHead")
        h = (self._features(x) - self.mean) / self.std
        for i, (w, b) in enumerate(self.linears):
            h = h @ w.T + b
            if i < len(self.linears) - 1:
                np.maximum(h, 0.0, out=h)
        # Stable sigmoid: exp of a large positive logit would overflow.
        z = h[:, 0]
        out = np.empty_like(z)
        pos = z >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])
        out[~pos] = ez / (1.0 + ez)
        return out.astype(np.float32)
