"""The pipeline config: typed dataclasses, loaded from YAML or a dict, with errors that say how to fix them.

Every section is a dataclass; :func:`load_config` checks each key against the
dataclass fields (unknown key → "did you mean"), each value against the field's
type (wrong type → expected vs found and an example), and each option string
against its ``Literal`` choices. The same objects can be built in Python::

    PipelineConfig(input=InputConfig(urls="shards/*.tar"), output="out/")

A minimal YAML file::

    input:
      urls: data/{00000..00009}.tar
    output: out/
    filters:
      - blur: 100           # blur_score >= 100
      - qr: 0.05            # qr_area_ratio < 0.05
    dedup:
      exact: true
      perceptual: {threshold: 10}
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nemo_frames import schema as S

Op = Literal[">=", ">", "<=", "<", "==", "!="]
OPS: tuple[str, ...] = typing.get_args(Op)


class ConfigError(ValueError):
    """A pipeline config that cannot run: the message names the key, the value and the fix."""


# --------------------------------------------------------------------------- sections
@dataclass
class InputConfig:
    """Where the input shards are.

    Parameters
    ----------
    urls : str or list of str
        Local paths, globs, brace ranges (``data/{00000..00099}.tar``), directories or fsspec URLs.
    storage_options : dict
        fsspec options for remote URLs (credentials, ``client_kwargs: {endpoint_url: ...}``).
    partition_bytes : int, optional
        Pack small consecutive shards into partitions of about this many bytes (default: one
        partition per shard).
    fields : "infer", dict or None
        Sidecar JSON keys to turn into columns (see :func:`nemo_frames.io.webdataset.read_webdataset`).
    duplicate_keys : {"filter", "rename", "error"}
        What happens to a key seen again in a later shard (the first occurrence, by shard order
        then offset, keeps it): ``filter`` (``duplicate_key: also in <shard>``), ``rename`` to
        ``<key>_dup<n>``, or ``error`` (``duplicate_key`` error). See docs/io.md.
    """

    urls: str | list[str] = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    partition_bytes: int | None = None
    fields: str | dict[str, str] | None = "infer"
    duplicate_keys: Literal["filter", "rename", "error"] = "filter"


@dataclass
class ClusterConfig:
    """Which Dask cluster runs the pipeline.

    Parameters
    ----------
    kind : {"local", "gpu", "slurm", "address", "threads"}
        ``threads``: a single-process local cluster of threads (fast to start; notebooks and
        tests). The others go to :func:`nemo_frames.cluster.get_client`.
    options : dict
        Keyword arguments for :func:`nemo_frames.cluster.get_client` (``n_workers``,
        ``threads_per_worker``, ``memory_limit``, ``address``...) and, through it, for the cluster class of
        ``kind``; an unknown key is a :class:`ConfigError` when the config is loaded.
    """

    kind: Literal["local", "gpu", "slurm", "address", "threads"] = "local"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClipSection:
    """The CLIP model of the score pass.

    Parameters
    ----------
    model : str
        open_clip architecture (``ViT-L-14``; ``nf-tiny-vit`` is a tiny test model).
    pretrained : str or None
        A hub tag (``openai``) found in the local hub cache, a local weights file or directory,
        or ``null`` for random weights (only meaningful for testing the plumbing).
    allow_download : bool
        Let a hub tag missing from the cache be downloaded.
    text : bool
        Also embed captions and compute ``clip_score``.
    """

    enabled: bool = True
    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    allow_download: bool = False
    text: bool = True


@dataclass
class ScoreSection:
    """The fused score pass: which operators run, and how.

    Parameters
    ----------
    clip : ClipSection or None
        CLIP image (and caption) embeddings; ``null`` turns CLIP (and the heads) off.
    aesthetic, nsfw : str or None
        Paths to the LAION aesthetic / NSFW head weights (need ViT-L-14 embeddings).
    blur, qr, phash, content_hash : bool
        Pixel operators (QR detection is the slowest of them, so it is off unless asked for).
    precision : {"fp32", "bf16", "fp16", "auto"}
        Precision of the CLIP weights (bf16 is much faster on CPUs with AMX; see docs/performance.md).
        ``auto``: each worker picks by its hardware (bf16 on AMX / AVX512-BF16 CPUs and CUDA 8.0+,
        fp16 on older CUDA, else fp32) and logs the choice.
    batch_size : int
        Images per CLIP forward pass.
    checkpoint : bool
        Write the scored table under ``<output>/scored/`` (one Parquet per partition, commit
        protocol) so a rerun skips partitions already scored.
    prefetch : bool
        Decode the next CLIP batch in a helper thread while the model runs. Does not change any
        result; turn it off only to keep a worker to exactly one busy thread.
    embedding_field : str or None
        Precomputed image embeddings: the sidecar JSON field that holds each sample's vector (a list
        of numbers). It becomes the ``embedding`` column (L2-normalised, length checked) for semantic
        dedup, with ``clip: null``. See :mod:`nemo_frames.models.precomputed`.
    """

    clip: ClipSection | None = field(default_factory=ClipSection)
    aesthetic: str | None = None
    nsfw: str | None = None
    blur: bool = True
    qr: bool = False
    phash: bool = True
    content_hash: bool = True
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    batch_size: int = 64
    checkpoint: bool = True
    prefetch: bool = True
    embedding_field: str | None = None


@dataclass
class FilterSpec:
    """One threshold filter: keep rows where ``column op value``.

    In YAML either the long form ``{column: blur_score, op: ">=", value: 100}`` or a shortcut:
    ``aesthetic: 5`` (aesthetic_score >= 5), ``nsfw: 0.5`` (nsfw_score < 0.5), ``blur: 100``
    (blur_score >= 100), ``qr: 0.05`` (qr_area_ratio < 0.05), ``clip_score: 0.2``
    (clip_score >= 0.2), ``min_size: 64`` (width >= 64 and height >= 64), or a string
    ``"blur_score >= 100"``.
    """

    column: str
    op: Op
    value: float
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.column


# name → (column(s), op): the named shortcuts of the ``filters`` list.
SHORTCUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "aesthetic": ((S.AESTHETIC_SCORE,), ">="),
    "nsfw": ((S.NSFW_SCORE,), "<"),
    "blur": ((S.BLUR_SCORE,), ">="),
    "qr": ((S.QR_AREA_RATIO,), "<"),
    "clip_score": ((S.CLIP_SCORE,), ">="),
    "min_size": ((S.WIDTH, S.HEIGHT), ">="),
}


@dataclass
class PerceptualSection:
    """Perceptual dedup: pHash Hamming distance ``<= threshold`` (0..64)."""

    threshold: int = 10


@dataclass
class SemanticSection:
    """Semantic dedup on CLIP embeddings (needs score.clip).

    Parameters
    ----------
    eps : float
        Pairs with cosine similarity ``>= 1 - eps`` are duplicates.
    n_clusters : int, optional
        k-means clusters (default: one per ~1000 rows; more clusters, less work per cluster).
    mode : {"components", "nemo_curator"}
        ``components``: keep one per connected group (SemDeDup); ``nemo_curator``: NeMo Curator's
        rule (drop every row similar to an earlier-ranked one).
    policy : {"farthest_centroid", "nearest_centroid", "max_score", "smallest_key"}
        Which row of a group survives (``max_score`` uses ``dedup.score_column``).
    sweep : list of float
        eps values of the sweep shown in the report (empty: no sweep).
    """

    eps: float = 0.01
    n_clusters: int | None = None
    mode: Literal["components", "nemo_curator"] = "components"
    policy: Literal["farthest_centroid", "nearest_centroid", "max_score", "smallest_key"] = "farthest_centroid"
    sweep: list[float] = field(default_factory=lambda: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1])


@dataclass
class DedupConfig:
    """Deduplication, run after the filters on the rows still kept.

    Parameters
    ----------
    exact : bool
        Same ``content_hash`` (raw bytes).
    perceptual : PerceptualSection or None
        pHash near-duplicates.
    semantic : SemanticSection or None
        CLIP-embedding near-duplicates.
    policy : {"smallest_key", "max_score"}
        Which member of a group survives.
    score_column : str, optional
        The column ``policy: max_score`` maximises (e.g. ``aesthetic_score``).
    """

    exact: bool = True
    perceptual: PerceptualSection | None = None
    semantic: SemanticSection | None = None
    policy: Literal["smallest_key", "max_score"] = "smallest_key"
    score_column: str | None = None


@dataclass
class ExportConfig:
    """Output shards of the kept samples.

    Parameters
    ----------
    enabled : bool
        Write shards (off: only the scored table, the ledger and the report).
    path : str, optional
        Output directory (default ``<output>/shards``).
    samples_per_shard : int
        Samples per output shard.
    index : bool
        Also write a DALI ``.idx`` per shard.
    members : list of str, optional
        Member extensions to copy (default: all).
    overwrite : bool
        Replace an earlier export written from other kept rows (after changing filters).
    """

    enabled: bool = True
    path: str | None = None
    samples_per_shard: int = 1000
    index: bool = False
    members: list[str] | None = None
    overwrite: bool = False


@dataclass
class ReportConfig:
    """The HTML report ``<output>/report.html``.

    Parameters
    ----------
    per_grid : int
        Thumbnails per image grid.
    thumb_px : int
        Longest side of a thumbnail (at most 128).
    """

    enabled: bool = True
    per_grid: int = 16
    thumb_px: int = 128


@dataclass
class PipelineConfig:
    """Everything a curation run needs. See ``configs/demo.yaml`` for a commented example.

    Examples
    --------
    >>> cfg = PipelineConfig(input=InputConfig(urls="shards/*.tar"), output="out")
    >>> cfg.score.blur, cfg.export.samples_per_shard
    (True, 1000)
    """

    input: InputConfig = field(default_factory=InputConfig)
    output: str = "out"
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    score: ScoreSection = field(default_factory=ScoreSection)
    filters: list[FilterSpec] = field(default_factory=list)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    on_error: Literal["record", "raise"] = "record"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML-able) of this config."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading
_EXAMPLES: dict[type, str] = {int: "a whole number like 64", float: "a number like 0.5", bool: "true or false",
                              str: "a string", dict: "a mapping (key: value lines)", list: "a list (- item lines)"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _found(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed here; expected {_type_name(tp)}")
        if value is False and type(None) in args and any(dataclasses.is_dataclass(a) for a in args):
            return None  # `perceptual: false` turns an optional section off
        errors = []
        # dataclass members first so that a mapping becomes a section, then the rest in order.
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: not dataclasses.is_dataclass(a)):
            try:
                return _convert(value, a, where)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, found {_found(value)}")
    if origin is Literal:
        if value in args:
            return value
        sugg = _suggest(str(value), [str(a) for a in args])
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}; {sugg}".rstrip("; "))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is True and all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                                 for f in dataclasses.fields(tp)):
            return tp()  # `semantic: true` means "on, with defaults"
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, "
                              f"found {_found(value)}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = args or (Any,)
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            if item is str and isinstance(value, str):
                return [value]
            raise ConfigError(f"{where}: expected a list, found {_found(value)}; write it as `- item` lines or [a, b]")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_EXAMPLES[dict]}, found {_found(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, found {_found(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected {_EXAMPLES[int]}, found {_found(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected {_EXAMPLES[float]}, found {_found(value)}")
    if tp is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise ConfigError(f"{where}: expected a string, found {_found(value)}; quote it in YAML")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover - a bug in this module


_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


def _filters(value: Any, where: str) -> list[FilterSpec]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of filters (`- blur: 100` lines), found {_found(value)}")
    out: list[FilterSpec] = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        if isinstance(item, FilterSpec):
            out.append(item)
        elif isinstance(item, str):
            m = _EXPR.match(item)
            if not m:
                raise ConfigError(f"{w}: cannot parse {item!r}; write `column op value`, e.g. 'blur_score >= 100'")
            out.append(FilterSpec(m[1], m[2], _convert(m[3], float, w), name=m[1]))  # type: ignore[arg-type]
        elif isinstance(item, dict) and "column" in item:
            out.append(_build(FilterSpec, item, w))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, v),) = item.items()
            if name not in SHORTCUTS:
                raise ConfigError(
                    f"{w}: unknown filter {name!r}; {_suggest(str(name), list(SHORTCUTS))}"
                    f"shortcuts are {', '.join(SHORTCUTS)}, or write {{column: ..., op: '>=', value: ...}}"
                )
            cols, op = SHORTCUTS[name]
            thr = _convert(v, float, f"{w}.{name}")
            out += [FilterSpec(c, op, thr, name=name) for c in cols]  # type: ignore[arg-type]
        else:
            raise ConfigError(
                f"{w}: expected a shortcut like `blur: 100`, a mapping with column/op/value, or a string "
                f"'column >= value'; found {_found(item)}"
            )
    return out


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        w = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(
                f"{w}: unknown key {key!r} in {where or 'the top level'}; {_suggest(str(key), names)}"
                f"valid keys: {', '.join(names)}"
            )
        if cls is PipelineConfig and key == "filters":
            kwargs[key] = _filters(value, w)
        else:
            kwargs[key] = _convert(value, hints[key], w)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Checks across fields that the types alone do not catch; returns ``cfg``."""
    if not cfg.input.urls:
        raise ConfigError("input.urls: no input given; set input.urls to shard paths, e.g. data/{00000..00009}.tar")
    for i, f in enumerate(cfg.filters):
        if f.op not in OPS:
            raise ConfigError(f"filters[{i}].op: {f.op!r} is not one of {', '.join(OPS)}")
    if cfg.export.samples_per_shard < 1:
        raise ConfigError(f"export.samples_per_shard: must be >= 1, found {cfg.export.samples_per_shard}")
    if cfg.score.batch_size < 1:
        raise ConfigError(f"score.batch_size: must be >= 1, found {cfg.score.batch_size}")
    if cfg.dedup.perceptual is not None and not 0 <= cfg.dedup.perceptual.threshold <= 64:
        raise ConfigError(f"dedup.perceptual.threshold: must be 0..64 bits, found {cfg.dedup.perceptual.threshold}")
    if cfg.dedup.semantic is not None and not 0 < cfg.dedup.semantic.eps < 1:
        raise ConfigError(f"dedup.semantic.eps: must be in (0, 1), found {cfg.dedup.semantic.eps}")
    if cfg.dedup.policy == "max_score" and not cfg.dedup.score_column:
        raise ConfigError("dedup.policy: 'max_score' needs dedup.score_column (e.g. aesthetic_score)")
    if not 8 <= cfg.report.thumb_px <= 128:
        raise ConfigError(f"report.thumb_px: must be 8..128, found {cfg.report.thumb_px}")
    if cfg.cluster.options:
        # Checked here, not when the cluster starts: a misspelt worker option otherwise ends, many seconds
        # later, as "Nanny failed to start". (Imports distributed only when there are options to check.)
        from nemo_frames.cluster import ClusterOptionError, check_cluster_options

        try:
            check_cluster_options(cfg.cluster.kind, cfg.cluster.options)
        except ClusterOptionError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


def config_from_dict(data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Build and check a :class:`PipelineConfig` from a plain dict (e.g. parsed YAML).

    Relative local paths (input urls, output, weights, export path) are taken relative to
    ``base_dir`` when given (the YAML file's directory is *not* used: paths are relative to where
    you run, like every other command-line tool; pass ``base_dir`` to change that).

    Examples
    --------
    >>> cfg = config_from_dict({"input": {"urls": "a.tar"}, "filters": [{"blur": 100}]})
    >>> cfg.filters[0]
    FilterSpec(column='blur_score', op='>=', value=100.0, name='blur')
    >>> config_from_dict({"input": {"urls": "a.tar"}, "scroe": {}})
    Traceback (most recent call last):
    ...
    nemo_frames.config.ConfigError: scroe: unknown key 'scroe' in the top level; did you mean 'score'? valid keys: input, output, cluster, score, filters, dedup, export, report, on_error
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, found {_found(data)}")
    cfg = _build(PipelineConfig, data, "")
    if base_dir is not None:
        cfg = _rebase(cfg, Path(base_dir))
    return validate(cfg)


def _rebase(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    def fix(p: str | None) -> str | None:
        if p is None or "://" in p or os.path.isabs(p):
            return p
        return str(base / p)

    urls = cfg.input.urls
    cfg.input.urls = [fix(u) for u in urls] if isinstance(urls, list) else fix(urls)  # type: ignore[assignment]
    cfg.output = fix(cfg.output) or cfg.output
    cfg.export.path = fix(cfg.export.path)
    cfg.score.aesthetic = fix(cfg.score.aesthetic)
    cfg.score.nsfw = fix(cfg.score.nsfw)
    if cfg.score.clip is not None and cfg.score.clip.pretrained and ("/" in cfg.score.clip.pretrained):
        cfg.score.clip.pretrained = fix(cfg.score.clip.pretrained)
    return cfg


def load_config(source: PipelineConfig | dict[str, Any] | str | os.PathLike[str], **overrides: Any) -> PipelineConfig:
    """A :class:`PipelineConfig` from a YAML path, a dict, or a config object.

    ``overrides`` are dotted keys applied on top (``load_config("demo.yaml", **{"export.enabled": False})``),
    the same as ``nemo-frames curate demo.yaml --set export.enabled=false``.

    Examples
    --------
    >>> load_config({"input": {"urls": "a.tar"}, "score": {"batch_size": "x"}})
    Traceback (most recent call last):
    ...
    nemo_frames.config.ConfigError: score.batch_size: expected a whole number like 64, found 'x' (str)
    """
    if isinstance(source, PipelineConfig):
        data: Any = source.to_dict()
        data["filters"] = [dataclasses.asdict(f) for f in source.filters]
    elif isinstance(source, dict):
        data = source
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a YAML file like configs/demo.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    data = _apply_overrides(dict(data), overrides)
    return config_from_dict(data)


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    import copy

    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1"`` → ``("a.b", 1)`` (the value parsed as YAML).

    Examples
    --------
    >>> parse_override("export.enabled=false")
    ('export.enabled', False)
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set export.samples_per_shard=500")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)
