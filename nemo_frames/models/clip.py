"""CLIP image/text embedder on open_clip, with offline-safe weight loading.

Weights come from one of:

- a **tag** of open_clip's pretrained registry (``pretrained="openai"``), resolved through the
  Hugging Face hub cache; downloaded only when the hub is allowed (``allow_download=True`` and
  ``HF_HUB_OFFLINE`` unset), otherwise a missing file is a clear error;
- a **local file** (``.safetensors``, ``.pt``, ``.pth``, ``.bin``);
- a **local directory** holding such a file (``open_clip_model.safetensors``,
  ``open_clip_pytorch_model.bin``, ...), optionally with an ``open_clip_config.json`` (an
  HF-style model folder, whose architecture and preprocessing then win over ``model=``);
- ``None``: random weights (benchmarks, tests).

Weights are read only as safetensors or with ``torch.load(weights_only=True)``
(:mod:`nemo_frames.models.weights`); open_clip is used to build the architecture and never to
fetch or unpickle a file. A ``sha256`` pin is checked before the bytes are parsed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nemo_frames.backend import require
from nemo_frames.models.weights import WeightsError, load_state_dict_torch, verify_sha256

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ClipConfig",
    "ClipEmbedder",
    "PrecisionChoice",
    "PreprocessParams",
    "WeightsError",
    "architecture_config",
    "clear_embedder_cache",
    "cpu_flags",
    "get_embedder",
    "register_model_configs",
    "resolve_precision",
    "resolve_weights",
]

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("configs")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# open_clip's own preference when a folder holds several checkpoints (safetensors first).
_DIR_PREFERENCE = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


@dataclass(frozen=True)
class ClipConfig:
    """Which CLIP model to run and how.

    Parameters
    ----------
    model : str
        open_clip architecture name (``"ViT-L-14"``, ``"ViT-B-32"``, ``"nf-tiny-vit"`` shipped
        here for tests). ``/`` is accepted for ``-`` (``"ViT-L/14"``).
    pretrained : str or None
        A pretrained tag (``"openai"``, ``"laion2b_s32b_b82k"``...), a local weights file, a local
        directory, or ``None`` for random weights.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` picks CUDA when torch sees a GPU.
    precision : {"fp32", "bf16", "fp16", "auto"}
        ``bf16`` casts the model *weights* to bfloat16 (fast on CPUs with AMX / AVX512-BF16 and on
        GPUs); ``fp16`` only on CUDA. ``auto`` picks by the hardware of the process that loads
        the model (each Dask worker decides for itself), see :func:`resolve_precision`, and logs
        the choice. Embeddings are returned as float32 either way; see
        ``docs/operators/models.md`` for the measured cosine to fp32.
    batch_size : int
        Images (or texts) per forward pass.
    threads : int or None
        ``torch.set_num_threads`` for this process (set it per Dask worker so that
        ``workers × threads`` does not exceed the cores). ``None`` leaves torch's default.
    sha256 : str or None
        Pin of the weights file; a different file aborts loading.
    cache_dir : str or None
        Hugging Face hub cache folder for tags (default: the hub's own, ``HF_HUB_CACHE``).
    quick_gelu : bool or None
        Use QuickGELU activations (OpenAI's models were trained with them). ``None`` takes the
        tag's value; **set True when loading OpenAI weights from a local file** into a
        non-``-quickgelu`` architecture, or use e.g. ``model="ViT-L-14-quickgelu"``.
    allow_download : bool
        Whether a tag missing from the hub cache may be downloaded (never when
        ``HF_HUB_OFFLINE=1``).

    Examples
    --------
    >>> ClipConfig().model, ClipConfig().pretrained
    ('ViT-L-14', 'openai')
    >>> ClipConfig(model="ViT-B-32", pretrained="/models/vit-b-32.safetensors", precision="bf16").precision
    'bf16'
    """

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    batch_size: int = 64
    threads: int | None = None
    sha256: str | None = None
    cache_dir: str | None = None
    quick_gelu: bool | None = None
    allow_download: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"ClipConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ValueError(
                f"ClipConfig.precision must be 'fp32', 'bf16', 'fp16' or 'auto', got {self.precision!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"ClipConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"ClipConfig.threads must be >= 1 or None, got {self.threads}")
        if self.sha256 is not None and self.pretrained is None:
            raise ValueError("ClipConfig.sha256 pins a weights file, but pretrained=None loads no file")
        if isinstance(self.pretrained, os.PathLike):
            object.__setattr__(self, "pretrained", os.fspath(self.pretrained))


@dataclass(frozen=True)
class PreprocessParams:
    """The model's own image preprocessing, for a decoder that reimplements it.

    Attributes
    ----------
    image_size : tuple of int
        ``(height, width)`` the model takes.
    mean, std : tuple of float
        Per-channel RGB normalisation applied to pixels scaled to ``[0, 1]``.
    interpolation : str
        Resize filter (``"bicubic"`` for OpenAI / OpenCLIP).
    resize_mode : str
        ``"shortest"`` (resize the short side then center crop), ``"longest"`` (resize the long
        side, pad with ``fill_color``) or ``"squash"``.
    fill_color : int
        Padding value for ``"longest"``.
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    fill_color: int = 0


Precision = Literal["fp32", "bf16", "fp16"]

# CPU flags (as /proc/cpuinfo spells them) with native bf16 dot products. Casting the weights to
# bf16 made ViT-L/14 3.5x faster on an AMX CPU and a 768x3072 layer 2.7x faster on an AVX512-BF16
# one, but ~7x *slower* than fp32 on an AVX2-only CPU, where bf16 is emulated.
_CPU_BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision="auto"`` resolved to, and why (see :func:`resolve_precision`)."""

    precision: Precision
    device: str
    reason: str


def cpu_flags(path: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty when unreadable).

    Examples
    --------
    >>> isinstance(cpu_flags(), frozenset)
    True
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(
    precision: str,
    device: str,
    *,
    flags: frozenset[str] | set[str] | None = None,
    cuda_capability: tuple[int, int] | None = None,
) -> PrecisionChoice:
    """The precision to run at: ``precision`` itself, or for ``"auto"`` the hardware's best.

    ``auto`` on CPU: ``bf16`` when the CPU has native bf16 dot products (``amx_bf16`` or
    ``avx512_bf16`` in ``/proc/cpuinfo``), else ``fp32`` (bf16 is emulated and slower there).
    On CUDA: ``bf16`` from compute capability 8.0 (Ampere, Hopper: fp32's range, no overflow),
    ``fp16`` on 7.x (Volta, Turing: fp16 tensor cores only), else ``fp32``.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
        An explicit value is returned unchanged.
    device : {"cpu", "cuda"} or a torch device string
        Where the model runs.
    flags : set of str, optional
        CPU flags (default: read from ``/proc/cpuinfo``).
    cuda_capability : (major, minor), optional
        Compute capability (default: asked from torch for ``device``).

    Examples
    --------
    >>> resolve_precision("auto", "cpu", flags={"avx2", "amx_bf16"}).precision
    'bf16'
    >>> resolve_precision("auto", "cpu", flags={"avx2", "fma"}).precision
    'fp32'
    >>> resolve_precision("auto", "cuda", cuda_capability=(9, 0)).precision
    'bf16'
    >>> resolve_precision("fp16", "cuda").reason
    'set explicitly'
    """
    if precision != "auto":
        return PrecisionChoice(precision, device, "set explicitly")  # type: ignore[arg-type]
    if str(device).startswith("cuda"):
        if cuda_capability is None:
            import torch

            cuda_capability = tuple(torch.cuda.get_device_capability(device))  # type: ignore[assignment]
        major, minor = cuda_capability  # type: ignore[misc]
        cap = f"compute capability {major}.{minor}"
        if major >= 8:
            return PrecisionChoice("bf16", device, f"CUDA {cap} has bf16 tensor cores")
        if major >= 7:
            return PrecisionChoice("fp16", device, f"CUDA {cap} has fp16 but no bf16 tensor cores")
        return PrecisionChoice("fp32", device, f"CUDA {cap} has no reduced-precision tensor cores")
    flags = cpu_flags() if flags is None else flags
    for flag, name in _CPU_BF16_FLAGS:
        if flag in flags:
            return PrecisionChoice("bf16", device, f"CPU has {name} ({flag}): native bf16 dot products")
    if not flags:
        return PrecisionChoice("fp32", device, "CPU features unknown (no /proc/cpuinfo flags)")
    return PrecisionChoice("fp32", device, "CPU has no AMX / AVX512-BF16: bf16 would be emulated (slower than fp32)")


@dataclass
class ResolvedWeights:
    """Where the weights of a :class:`ClipConfig` come from (see :func:`resolve_weights`)."""

    kind: Literal["none", "tag", "file", "dir"]
    path: Path | None
    tag_cfg: dict[str, Any] | None = None
    dir_config: dict[str, Any] | None = None


_CONFIGS_REGISTERED = False


def register_model_configs() -> None:
    """Register the architectures shipped in ``nemo_frames/models/configs`` with open_clip.

    Idempotent. Called by :class:`ClipEmbedder`; call it yourself to use ``"nf-tiny-vit"`` with
    bare open_clip.

    Examples
    --------
    >>> import open_clip
    >>> register_model_configs()
    >>> "nf-tiny-vit" in open_clip.list_models()
    True
    """
    global _CONFIGS_REGISTERED
    if _CONFIGS_REGISTERED:
        return
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)
    _CONFIGS_REGISTERED = True


def _clean_model_name(name: str) -> str:
    return name.replace("/", "-")


def architecture_config(model: str) -> dict[str, Any] | None:
    """open_clip's JSON config of an architecture (``embed_dim``, ``vision_cfg``...), or None if unknown.

    Read from the JSON files (this package's, then open_clip's) without importing open_clip,
    which imports torch: a driver that only plans a run needs a number from it, not the model
    (importing took 5-8 s here). Falls back to open_clip's registry for names not found as files.

    Examples
    --------
    >>> architecture_config("nf-tiny-vit")["embed_dim"], architecture_config("ViT-L/14")["embed_dim"]
    (64, 768)
    """
    import importlib.util

    name = _clean_model_name(model)
    dirs = [_CONFIG_DIR]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    for d in dirs:
        f = d / f"{name}.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except ValueError:
                break
    try:
        import open_clip

        register_model_configs()
        return open_clip.get_model_config(name)
    except Exception:  # the loader reports bad model names itself, with its own message
        return None


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return True


def _find_checkpoint_in_dir(d: Path) -> Path | None:
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        return None
    by_name = {p.name: p for p in files}
    for name in _DIR_PREFERENCE:
        if name in by_name:
            return by_name[name]
    safes = [p for p in files if p.suffix == ".safetensors"]
    return (safes or files)[0]


def _resolve_tag(cfg: ClipConfig, model: str, tag: str) -> ResolvedWeights:
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(model)
        raise WeightsError(
            f"ClipEmbedder: pretrained={tag!r} is neither an existing local file/directory nor a "
            f"pretrained tag of model {model!r} (known tags: {known or 'none'}). Pass a tag, or "
            "pretrained=<path to a .safetensors/.pt/.bin file or a weights directory>."
        )
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        raise WeightsError(
            f"ClipEmbedder: tag {tag!r} of {model!r} is only published at {tag_cfg.get('url')!r} "
            "(no Hugging Face hub entry), which this loader does not fetch. Download it once and "
            "pass pretrained=<local path>."
        )
    # open_clip's convention: "org/repo/" means the repo's default file, "org/repo/file.bin" a named one.
    repo_id, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
    if filename:
        stem, ext = os.path.splitext(filename)
        candidates = [stem + ".safetensors", filename] if ext in (".bin", ".pth", ".pt") else [filename]
    else:
        candidates = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]

    from huggingface_hub import hf_hub_download

    for name in candidates:
        try:
            path = hf_hub_download(repo_id, name, cache_dir=cfg.cache_dir, local_files_only=True)
            return ResolvedWeights("tag", Path(path), tag_cfg=dict(tag_cfg))
        except Exception:  # any miss means "not cached": try the next name
            continue
    offline = _offline()
    last: Exception | None = None
    if cfg.allow_download and not offline:
        for name in candidates:
            try:
                path = hf_hub_download(repo_id, name, cache_dir=cfg.cache_dir)
                return ResolvedWeights("tag", Path(path), tag_cfg=dict(tag_cfg))
            except Exception as exc:
                last = exc
    why = (
        "HF_HUB_OFFLINE is set"
        if offline
        else "allow_download=False"
        if not cfg.allow_download
        else f"the download failed ({type(last).__name__}: {last})"
    )
    raise WeightsError(
        f"ClipEmbedder: weights for model={model!r} pretrained={tag!r} (hub repo {repo_id}, files "
        f"{candidates}) are not in the local hub cache ({cfg.cache_dir or 'default HF_HUB_CACHE'}) and "
        f"were not downloaded because {why}. Either put the file in the cache on a machine with "
        f"network (huggingface-cli download {repo_id} {candidates[0]}), copy it here and pass "
        "pretrained=<local .safetensors/.bin path or directory>, or unset HF_HUB_OFFLINE to allow "
        "the download."
    ) from last


def resolve_weights(config: ClipConfig) -> ResolvedWeights:
    """Find the weights file a config refers to, without loading it.

    Raises
    ------
    WeightsError
        When a path does not exist, a tag is unknown, or a tag's file is not cached and may not be
        downloaded.

    Examples
    --------
    >>> resolve_weights(ClipConfig(model="nf-tiny-vit", pretrained=None)).kind
    'none'
    """
    pre = config.pretrained
    if pre is None:
        return ResolvedWeights("none", None)
    p = Path(pre).expanduser()
    if p.is_file():
        return ResolvedWeights("file", p)
    if p.is_dir():
        ckpt = _find_checkpoint_in_dir(p)
        if ckpt is None:
            raise WeightsError(
                f"ClipEmbedder: directory {p} holds no weights file ({', '.join(_WEIGHT_SUFFIXES)}); "
                "expected e.g. open_clip_model.safetensors or open_clip_pytorch_model.bin."
            )
        dir_config = None
        cfg_file = p / "open_clip_config.json"
        if cfg_file.is_file():
            dir_config = json.loads(cfg_file.read_text())
            if "model_cfg" not in dir_config:
                raise WeightsError(
                    f"ClipEmbedder: {cfg_file} has no 'model_cfg' key (not an open_clip config)."
                )
        return ResolvedWeights("dir", ckpt, dir_config=dir_config)
    if os.sep in pre or pre.endswith(_WEIGHT_SUFFIXES) or pre.startswith((".", "~")):
        raise WeightsError(
            f"ClipEmbedder: pretrained={pre!r} looks like a path but no such file or directory exists."
        )
    return _resolve_tag(config, _clean_model_name(config.model), pre)


def _load_weights_into(model: Any, state_dict: dict[str, Any]) -> None:
    """open_clip's checkpoint fix-ups (old text layout, pos-embed resize) then a strict load."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = convert_state_dict(model, state_dict)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in sd and own is not None and own.ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(own.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None:
        import torch

        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    sd.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsError(
            "ClipEmbedder: the weights do not match the architecture: "
            f"{len(missing)} missing keys (e.g. {list(missing)[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {list(unexpected)[:3]}). Check that model= names the architecture the file was saved from."
        )


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


class ClipEmbedder:
    """An open_clip model loaded once, embedding preprocessed images and texts.

    Parameters
    ----------
    config : ClipConfig
        Model, weights, device and precision.

    Attributes
    ----------
    model : torch.nn.Module
        The open_clip model in eval mode.
    tokenizer : callable
        open_clip's tokenizer for the model.
    preprocess : callable
        open_clip's own PIL → tensor transform (the reference for faster preprocessing).
    weights : ResolvedWeights
        Where the weights came from.
    precision : {"fp32", "bf16", "fp16"}
        The precision the model runs at (``config.precision`` resolved when it is ``"auto"``).
    precision_reason : str
        Why (``"set explicitly"``, or the hardware feature ``auto`` went by).

    Examples
    --------
    >>> import numpy as np
    >>> emb = ClipEmbedder(ClipConfig(model="nf-tiny-vit", pretrained=None, device="cpu"))
    >>> h, w = emb.preprocess_params().image_size
    >>> x = np.zeros((2, 3, h, w), np.float32)
    >>> e = emb.embed_images(x)
    >>> print(e.shape == (2, emb.dim), np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5))
    True True
    """

    def __init__(self, config: ClipConfig | None = None) -> None:
        self.config = config = config or ClipConfig()
        torch = require("torch", "clip", "ClipEmbedder")
        open_clip = require("open_clip", "clip", "ClipEmbedder")
        register_model_configs()

        if config.device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = config.device
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "ClipEmbedder: device='cuda' but torch sees no CUDA device; use device='cpu' or 'auto'."
            )
        choice = resolve_precision(config.precision, device)
        if config.precision == "auto":
            log.info(
                "ClipEmbedder(%s): precision 'auto' -> %s on %s (%s)",
                config.model, choice.precision, device, choice.reason,
            )
        if choice.precision == "fp16" and device != "cuda":
            raise ValueError(
                "ClipEmbedder: precision='fp16' is only supported on CUDA (fp16 matmuls on CPU are slow "
                "and lose accuracy); use precision='bf16' on CPU."
            )
        if config.threads is not None:
            torch.set_num_threads(config.threads)

        model_name = _clean_model_name(config.model)
        weights = resolve_weights(config)
        if weights.path is not None:
            verify_sha256(weights.path, config.sha256, what=f"ClipEmbedder({model_name})")

        kwargs: dict[str, Any] = {}
        tag_cfg = weights.tag_cfg or {}
        quick_gelu = (
            config.quick_gelu if config.quick_gelu is not None else bool(tag_cfg.get("quick_gelu", False))
        )
        if tag_cfg:
            kwargs.update(
                image_mean=tuple(tag_cfg["mean"]),
                image_std=tuple(tag_cfg["std"]),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
            )
        arch = model_name
        if weights.kind == "dir" and weights.dir_config is not None:
            # An HF-style folder carries its own architecture and preprocessing.
            arch = f"local-dir:{weights.path.parent}"  # type: ignore[union-attr]
        elif model_name not in open_clip.list_models():
            raise ValueError(
                f"ClipEmbedder: unknown open_clip architecture {config.model!r}; "
                f"known: {', '.join(open_clip.list_models()[:12])}, ... (open_clip.list_models())."
            )
        # open_clip logs "initialized randomly" at WARNING on the root logger because it loads no
        # weights itself; the weights are loaded below, so that message would be false here.
        quiet = _DropMessage("initialized randomly") if weights.path is not None else None
        if quiet is not None:
            logging.getLogger().addFilter(quiet)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=None,
                load_weights=False,
                device="cpu",
                force_quick_gelu=quick_gelu,
                pretrained_text=False,
                **kwargs,
            )
        finally:
            if quiet is not None:
                logging.getLogger().removeFilter(quiet)
        if weights.path is not None:
            _load_weights_into(model, load_state_dict_torch(weights.path, what=f"ClipEmbedder({model_name})"))
        else:
            log.info("ClipEmbedder(%s): pretrained=None, using random weights", model_name)

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice.precision]
        # Casting the whole model (not autocast) is what made bf16 fast on CPU: autocast re-casts
        # weights every call and measured slower than fp32 here.
        model = model.to(device=device, dtype=dtype).eval()
        for p in model.parameters():
            p.requires_grad_(False)

        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.weights = weights
        self.device = torch.device(device)
        self.dtype = dtype
        self.precision: Precision = choice.precision
        self.precision_reason = choice.reason
        self._dim: int | None = getattr(model.visual, "output_dim", None)
        self._torch = torch

    # ------------------------------------------------------------------ info
    @property
    def dim(self) -> int:
        """Embedding dimension (768 for ViT-L-14, 512 for ViT-B-32)."""
        if self._dim is None:
            h, w = self.preprocess_params().image_size
            self._dim = int(self.embed_images(np.zeros((1, 3, h, w), np.float32)).shape[1])
        return self._dim

    def preprocess_params(self) -> PreprocessParams:
        """The model's preprocessing (size, mean, std, filter, resize mode) as open_clip defines it.

        Examples
        --------
        >>> emb = get_embedder(ClipConfig(model="nf-tiny-vit", pretrained=None, device="cpu"))
        >>> emb.preprocess_params().image_size, emb.preprocess_params().interpolation
        ((64, 64), 'bicubic')
        """
        pp = dict(self.model.visual.preprocess_cfg)
        size = pp.get("size", 224)
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return PreprocessParams(
            image_size=hw,
            mean=tuple(float(v) for v in pp["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in pp["std"]),  # type: ignore[arg-type]
            interpolation=str(pp.get("interpolation", "bicubic")),
            resize_mode=str(pp.get("resize_mode", "shortest")),
            fill_color=int(pp.get("fill_color", 0)),
        )

    # --------------------------------------------------------------- compute
    def _as_tensor(self, batch: Any) -> torch.Tensor:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"ClipEmbedder.embed_images: expected a numpy array or torch tensor, got {type(batch)}"
            )
        h, w = self.preprocess_params().image_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (h, w):
            raise ValueError(
                f"ClipEmbedder.embed_images: expected a preprocessed batch of shape (N, 3, {h}, {w}), "
                f"found {tuple(x.shape)}. Preprocess with preprocess_params() first."
            )
        if not x.is_floating_point():
            raise TypeError(
                f"ClipEmbedder.embed_images: expected float pixels normalised with the model mean/std, found {x.dtype}"
            )
        return x

    def _run(self, x: torch.Tensor, fn: Any, n: int) -> np.ndarray:
        torch = self._torch
        chunks = []
        bs = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, n, bs):
                part = x[start : start + bs]
                part = part.to(self.device, dtype=self.dtype if part.is_floating_point() else part.dtype)
                # Normalise in float32: a bf16 norm would add its own rounding on top of the model's.
                feats = torch.nn.functional.normalize(fn(part).float(), dim=-1)
                chunks.append(feats.cpu().numpy())
        return np.concatenate(chunks, axis=0)

    def embed_images(self, batch: Any) -> np.ndarray:
        """L2-normalised float32 embeddings ``(N, dim)`` of a preprocessed batch ``(N, 3, H, W)``.

        ``batch`` is a float numpy array or torch tensor already resized and normalised as
        :meth:`preprocess_params` says; it is run in chunks of ``config.batch_size``.
        """
        x = self._as_tensor(batch)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._run(x, self.model.encode_image, len(x))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings ``(N, dim)`` of texts, tokenised by open_clip's tokenizer.

        Texts longer than the context length (77 tokens for CLIP) are truncated by the tokenizer.

        Examples
        --------
        >>> emb = get_embedder(ClipConfig(model="nf-tiny-vit", pretrained=None, device="cpu"))
        >>> emb.embed_texts(["a cat", "a dog"]).shape
        (2, 64)
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(texts)
        return self._run(tokens, self.model.encode_text, len(texts))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ClipEmbedder(model={c.model!r}, weights={self.weights.kind}:{self.weights.path}, "
            f"device={self.device}, precision={self.precision}"
            f"{' (auto)' if c.precision == 'auto' else ''})"
        )


_EMBEDDERS: dict[ClipConfig, ClipEmbedder] = {}
_LOCK = threading.Lock()


def get_embedder(config: ClipConfig | None = None, **overrides: Any) -> ClipEmbedder:
    """The process-wide :class:`ClipEmbedder` for a config (loaded on first use).

    A Dask worker calling this from every task loads the model once; equal configs share one
    instance. ``overrides`` build a config from keyword arguments.

    Examples
    --------
    >>> a = get_embedder(model="nf-tiny-vit", pretrained=None, device="cpu")
    >>> b = get_embedder(ClipConfig(model="nf-tiny-vit", pretrained=None, device="cpu"))
    >>> a is b
    True
    """
    if config is None:
        config = ClipConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    with _LOCK:
        emb = _EMBEDDERS.get(config)
        if emb is None:
            emb = _EMBEDDERS[config] = ClipEmbedder(config)
        return emb


def clear_embedder_cache() -> None:
    """Drop the cached embedders (frees their memory once no other reference is held)."""
    with _LOCK:
        _EMBEDDERS.clear()
