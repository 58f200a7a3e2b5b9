"""The curation pipeline: scan → score (checkpointed) → filters → dedup → export → summary → report.

One call runs it, from a YAML file or a :class:`~nemo_frames.config.PipelineConfig`::

    import nemo_frames
    result = nemo_frames.curate("configs/demo.yaml")
    result.summary["kept"], result.report

The same from a shell: ``nemo-frames curate configs/demo.yaml``.

Run directory layout (``output``)::

    scored/    one Parquet per input partition, committed with done markers (resume skips them)
    table/     the final sample table without embeddings: every row with its ledger status / reason
    dedup/     the duplicate tables (exact.parquet, perceptual.parquet, semantic.parquet), eps_sweep.json
    shards/    the exported WebDataset shards (+ Parquet, stats.json, errors.parquet)
    summary.json, config.yaml, report.html

Rerunning with the same config resumes: scored partitions and exported shards with done
markers are skipped. Changing only the filters or dedup reuses the scores; the export is
then rewritten only when ``export.overwrite: true`` (it refuses to mix outputs of two configs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nemo_frames import schema as S
from nemo_frames.config import (
    ConfigError,
    PipelineConfig,
    load_config,
    parse_override,
)
from nemo_frames.progress import StageTimer, print_summary, run_futures

SCORE_COLUMNS = (
    S.AESTHETIC_SCORE,
    S.NSFW_SCORE,
    S.CLIP_SCORE,
    S.BLUR_SCORE,
    S.QR_AREA_RATIO,
    S.WIDTH,
    S.HEIGHT,
)
_HEAVY = (S.EMBEDDING, S.TEXT_EMBEDDING, S.IMAGE_BYTES)
# Which score option produces which column, to explain a filter whose column is absent.
_PRODUCER = {
    S.AESTHETIC_SCORE: "score.aesthetic",
    S.NSFW_SCORE: "score.nsfw",
    S.CLIP_SCORE: "score.clip (with text: true)",
    S.BLUR_SCORE: "score.blur",
    S.QR_AREA_RATIO: "score.qr",
    S.PHASH: "score.phash",
    S.CONTENT_HASH: "score.content_hash",
    S.EMBEDDING: "score.clip",
    S.WIDTH: "any pixel operator",
    S.HEIGHT: "any pixel operator",
}


@dataclass
class ScorePlan:
    """The score options that will actually run, and why others will not."""

    kwargs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    skipped_columns: dict[str, str] = field(default_factory=dict)
    random_weights: bool = False
    # (field, dim) of precomputed embeddings read from the sidecars, when score.embedding_field is set.
    sidecar_embedding: tuple[str, int] | None = None


@dataclass
class RunResult:
    """What :func:`curate` did.

    Attributes
    ----------
    config : PipelineConfig
    output : str
        The run directory.
    summary : dict
        The run summary (also in ``<output>/summary.json``).
    export : ExportResult or None
    report : str or None
        Path of ``report.html``.
    """

    config: PipelineConfig
    output: str
    summary: dict[str, Any]
    export: Any = None
    report: str | None = None

    def table(self, columns: list[str] | None = None) -> Any:
        """The final sample table (every row with its ledger), as a Dask dataframe."""
        from nemo_frames.io.parquet import read_parquet

        return read_parquet(os.path.join(self.output, "table"), columns=columns)

    def scored(self) -> Any:
        """The scored table with embeddings (the checkpoint), as a Dask dataframe."""
        from nemo_frames.io.parquet import read_parquet

        return read_parquet(os.path.join(self.output, "scored", "*.parquet"))

    def _repr_html_(self) -> str:
        s = self.summary
        return (
            f"<b>nemo_frames run</b> {self.output}: {s.get('samples_in', 0)} in, {s.get('kept', 0)} kept, "
            f"{s.get('filtered', 0)} filtered, {s.get('errors', 0)} errors"
            + (f" — <a href='{self.report}'>report</a>" if self.report else "")
        )


# --------------------------------------------------------------------------- planning
def _say(msg: str, *, quiet: bool = False) -> None:
    if not quiet:
        print(f"[nemo_frames] {msg}", file=sys.stderr, flush=True)


def plan_score(cfg: PipelineConfig, *, shards: list[str] | None = None) -> ScorePlan:
    """Decide which score operators run: CLIP and the heads are skipped (with a note) when their weights are missing.

    Examples
    --------
    >>> from nemo_frames.config import config_from_dict
    >>> cfg = config_from_dict({"input": {"urls": "x.tar"}, "score": {"clip": None, "aesthetic": "nope.pth"}})
    >>> p = plan_score(cfg)
    >>> "aesthetic" in p.kwargs, p.skipped_columns["aesthetic_score"][:40]
    (False, 'aesthetic head skipped: weights file nop')
    """
    sc = cfg.score
    kw: dict[str, Any] = {
        "blur": sc.blur,
        "qr": sc.qr,
        "phash": sc.phash,
        "content_hash": sc.content_hash,
        "prefetch": sc.prefetch,
        "storage_options": cfg.input.storage_options or None,
    }
    plan = ScorePlan(kw)
    clip_dim: int | None = None
    clip_off_why = "score.clip is off"
    if sc.clip is not None and sc.clip.enabled:
        c = sc.clip
        try:
            from nemo_frames.models.clip import ClipConfig, WeightsError, resolve_weights
        except ImportError as exc:  # torch / open_clip not installed
            clip_off_why = f"CLIP stages skipped: {exc}; install the extra: uv pip install 'nemo-frames[clip]'"
            plan.notes.append(clip_off_why)
        else:
            ccfg = ClipConfig(
                model=c.model,
                pretrained=c.pretrained,
                precision=sc.precision,
                batch_size=sc.batch_size,
                allow_download=c.allow_download,
            )
            try:
                resolved = resolve_weights(ccfg)
            except WeightsError as exc:
                where = f"{c.model}/{c.pretrained}"
                clip_off_why = (
                    f"CLIP stages skipped: no weights for {where} "
                    f"{'in the hub cache and no local path' if c.pretrained and os.sep not in c.pretrained else 'at that path'}; "
                    "set score.clip.pretrained: /path/to/open_clip_model.safetensors (or allow_download: true "
                    f"on a machine with network). Details: {exc}"
                )
                plan.notes.append(clip_off_why)
            else:
                kw["clip"] = ccfg
                kw["text"] = bool(c.text)
                clip_dim = _embed_dim(c.model)
                if resolved.kind == "none":
                    plan.random_weights = True
                    plan.notes.append(
                        f"CLIP {c.model} runs with RANDOM weights (score.clip.pretrained: null): embeddings, "
                        "clip_score and semantic dedup exercise the code path but their values are meaningless; "
                        "set score.clip.pretrained to real weights for real scores"
                    )
    if sc.embedding_field:
        if "clip" in kw:
            raise ConfigError(
                f"score.embedding_field: {sc.embedding_field!r} and score.clip both produce the embedding column; "
                "set score.clip: null to use the precomputed vectors, or remove score.embedding_field"
            )
        plan.sidecar_embedding = _sidecar_embedding_dim(cfg, sc.embedding_field, shards)
        clip_off_why = f"the embedding column comes from the sidecar field {sc.embedding_field!r}"
    if "clip" not in kw:
        for col in (S.EMBEDDING, S.TEXT_EMBEDDING, S.CLIP_SCORE):
            if col == S.EMBEDDING and plan.sidecar_embedding:
                continue
            plan.skipped_columns[col] = clip_off_why
    elif not kw.get("text"):
        plan.skipped_columns[S.CLIP_SCORE] = "clip_score skipped: score.clip.text is false"
    for head, col, example in (
        ("aesthetic", S.AESTHETIC_SCORE, "sac+logos+ava1-l14-linearMSE.pth"),
        ("nsfw", S.NSFW_SCORE, "clip_autokeras_binary_nsfw_l14.safetensors"),
    ):
        path = getattr(sc, head)
        why = None
        if path is None:
            why = f"{head} head skipped: score.{head} is not set; set score.{head}: /path/to/{example}"
        elif not Path(path).expanduser().is_file():
            why = f"{head} head skipped: weights file {path} not found; set score.{head}: /path/to/{example}"
        elif "clip" not in kw:
            why = f"{head} head skipped: it scores CLIP embeddings, and {clip_off_why}"
        else:
            head_dim = _head_dim(head, path)
            if clip_dim is not None and head_dim is not None and head_dim != clip_dim:
                why = (
                    f"{head} head skipped: {Path(path).name} expects {head_dim}-d embeddings but "
                    f"{sc.clip.model if sc.clip else '?'} gives {clip_dim}-d; use the CLIP model the head was "
                    "trained on (ViT-L-14 / openai for the LAION heads)"
                )
        if why:
            plan.skipped_columns[col] = why
            if path is not None:
                plan.notes.append(why)
        else:
            kw[head] = str(path)
    return plan


def _sidecar_embedding_dim(cfg: PipelineConfig, field_name: str, shards: list[str] | None) -> tuple[str, int]:
    """``(field, dim)`` of the precomputed embeddings, the dimension read from the first shards' sidecars.

    ``shards``: the input already listed by the caller (``curate`` has it); listed here otherwise.
    """
    from nemo_frames.models.precomputed import infer_dim

    so = cfg.input.storage_options or None
    if shards is None:
        from nemo_frames.io.urls import expand_urls

        shards = [s.url for s in expand_urls(cfg.input.urls, storage_options=so)]
    for url in shards[:3]:
        dim = infer_dim(url, field_name, storage_options=so)
        if dim:
            return field_name, dim
    raise ConfigError(
        f"score.embedding_field: no sidecar in the first {min(len(shards), 3)} shard(s) has a non-empty list in field "
        f"{field_name!r}; check the field name (the sidecars' .json members) or remove score.embedding_field"
    )


def _embed_dim(model: str) -> int | None:
    from nemo_frames.models.clip import architecture_config

    mc = architecture_config(model)
    try:
        return int(mc["embed_dim"]) if mc else None
    except (KeyError, TypeError, ValueError):
        return None


def _head_dim(head: str, path: str) -> int | None:
    try:
        from nemo_frames.models.heads import AestheticHead, NsfwHead

        cls = AestheticHead if head == "aesthetic" else NsfwHead
        return int(cls.from_file(path).dim)
    except Exception:  # a broken file fails loudly in the score pass, with the loader's message
        return None


def _score_fingerprint(cfg: PipelineConfig, plan: ScorePlan, urls: list[str]) -> dict[str, Any]:
    """Everything that determines the scored bytes (the checkpoint's config hash)."""
    import nemo_frames

    # prefetch changes how fast, not what: a checkpoint made either way is resumed either way.
    kw = {k: v for k, v in plan.kwargs.items() if k not in ("storage_options", "prefetch")}
    if plan.sidecar_embedding:
        kw["sidecar_embedding"] = list(plan.sidecar_embedding)
    if "clip" in kw:
        kw["clip"] = dataclasses.asdict(kw["clip"])
        kw["clip"].pop("batch_size", None)
        kw["clip"].pop("threads", None)
    return {
        "stage": "score",
        "nemo_frames": nemo_frames.__version__,
        "input": {"urls": urls, "partition_bytes": cfg.input.partition_bytes, "fields": cfg.input.fields},
        "score": kw,
    }


# --------------------------------------------------------------------------- stages
@contextlib.contextmanager
def _client_for(cfg: PipelineConfig, client: Any) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    from nemo_frames.cluster import cluster

    opts = dict(cfg.cluster.options)
    kind = cfg.cluster.kind
    if kind == "threads":
        kind = "local"
        opts.setdefault("processes", False)
    with cluster(kind, **opts) as c:  # type: ignore[arg-type]
        yield c


def _scan(cfg: PipelineConfig) -> Any:
    from nemo_frames.io.webdataset import read_webdataset

    kw: dict[str, Any] = {"storage_options": cfg.input.storage_options or None, "on_error": cfg.on_error}
    if cfg.input.partition_bytes is not None:
        kw["partition_bytes"] = cfg.input.partition_bytes
    if cfg.input.fields != "infer":
        kw["fields"] = cfg.input.fields
    return read_webdataset(cfg.input.urls, **kw)


def _input_urls(cfg: PipelineConfig) -> list[str]:
    """The input shards as ``url#size`` (a changed shard changes the checkpoint's config hash).

    "Nothing matched" is a :class:`ConfigError` naming ``input.urls``.
    """
    from nemo_frames.io.urls import NoShardsFound, expand_urls

    try:
        return [f"{s.url}#{s.size}" for s in expand_urls(cfg.input.urls, storage_options=cfg.input.storage_options or None)]
    except NoShardsFound as exc:
        raise ConfigError(f"input.urls: {str(exc).removeprefix('read_webdataset: ')}") from None


def _partition_parquet(part: pd.DataFrame) -> bytes:
    import pyarrow.parquet as pq

    from nemo_frames.io.parquet import table_from_pandas

    buf = io.BytesIO()
    pq.write_table(table_from_pandas(part.reset_index(drop=True)), buf, compression="zstd")
    return buf.getvalue()


def _commit_scored(part: pd.DataFrame, committer: Any, name: str) -> dict[str, Any]:
    from nemo_frames.ledger import counts

    c = counts(part)
    committer.write(name, {f"{name}.parquet": _partition_parquet(part)}, counts=c)
    return c


def _score_stage(
    cfg: PipelineConfig, scanned: Any, plan: ScorePlan, urls: list[str], *, overwrite: bool, progress: bool, client: Any
) -> tuple[Any, dict[str, Any]]:
    """Score every partition not yet checkpointed; return (scored table, info)."""
    import dask

    from nemo_frames.scoring import score

    n = scanned.npartitions
    if plan.sidecar_embedding:
        from nemo_frames.models.precomputed import sidecar_embeddings

        scanned = sidecar_embeddings(scanned, *plan.sidecar_embedding)
    if not cfg.score.checkpoint:
        scored = score(scanned, **plan.kwargs)
        scored = client.persist(scored) if client is not None else scored.persist()
        return scored, {"partitions": n, "scored": n, "resumed": 0}

    from nemo_frames.io.commit import Committer, ConfigMismatchError, output_name
    from nemo_frames.io.parquet import read_parquet

    root = os.path.join(cfg.output, "scored")
    try:
        committer = Committer(root, stage="score", config=_score_fingerprint(cfg, plan, urls), overwrite=overwrite)
    except ConfigMismatchError as exc:
        raise ConfigError(
            f"score: {root} holds scores computed under another score/input config ({exc}). Either use another "
            "`output` directory, or rerun with --overwrite (curate(..., overwrite=True)) to rescore from scratch."
        ) from None
    names = [output_name(i, stage="score", config_hash=committer.config_hash) for i in range(n)]
    todo = [i for i in range(n) if not committer.done(names[i])]
    if todo:
        scored = score(scanned.partitions[todo], **plan.kwargs)
        parts = scored.to_delayed()
        tasks = [
            dask.delayed(_commit_scored, pure=False)(p, committer, names[i]) for p, i in zip(parts, todo, strict=True)
        ]
        run_futures(tasks, desc="score", progress=progress, samples_of=lambda c: c["samples"], client=client)
    if len(todo) < n:
        _say(f"score: resumed, {n - len(todo)} of {n} partitions already scored in {root}", quiet=not progress)
    table = read_parquet([f"{committer.url}/{nm}.parquet" for nm in names])
    return table, {"partitions": n, "scored": len(todo), "resumed": n - len(todo), "config_hash": committer.config_hash}


def _repeated_keys(
    cfg: PipelineConfig, table: Any, urls: list[str], client: Any, notes: list[str], *, progress: bool
) -> tuple[Any, dict[str, Any]]:
    """Find keys repeated across shards (a distributed count by key) and act on the later occurrences.

    What was done is written to ``<output>/dedup/duplicate_keys.parquet`` (one row per later
    occurrence) and summarised in the run summary.
    """
    from nemo_frames.io.keys import mark_repeated_keys
    from nemo_frames.io.webdataset import ShardScanError

    action = cfg.input.duplicate_keys
    shards = [u.rsplit("#", 1)[0] for u in urls]  # _urls gives url#size
    table, record = mark_repeated_keys(table, action=action, shards=shards)
    path = os.path.join(cfg.output, "dedup", "duplicate_keys.parquet")
    if record.empty:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return table, {"action": action, "repeats": 0}
    first = record.iloc[0]
    where = f"{first['key']!r} in {first['source']} (also in {first['first_source']})"
    if action == "error" and cfg.on_error == "raise":
        raise ShardScanError(
            f"input.duplicate_keys: {len(record)} sample(s) repeat a key of an earlier shard, e.g. {where}; "
            "set input.duplicate_keys: filter or rename to go on"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_frame(record.astype({c: "string" for c in record.columns if record[c].dtype == object}), path)
    msg = f"input: {len(record)} sample(s) repeat a key of an earlier shard ({action}), e.g. {where}"
    notes.append(msg)
    _say(msg, quiet=not progress)
    table = client.persist(table) if client is not None else table.persist()
    return table, {"action": action, "repeats": len(record), "record": path}


def _filters(cfg: PipelineConfig, table: Any, plan: ScorePlan, notes: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    import difflib

    from nemo_frames.filters import Threshold, apply_filters

    stages = []
    applied = []
    cols = list(table.columns)
    for i, f in enumerate(cfg.filters):
        if f.column not in cols:
            if f.column in plan.skipped_columns:
                notes.append(f"filter {f.label!r} ({f.column} {f.op} {f.value:g}) skipped: {plan.skipped_columns[f.column]}")
                continue
            if f.column in _PRODUCER:
                raise ConfigError(
                    f"filters[{i}]: column {f.column!r} is not computed; turn on {_PRODUCER[f.column]} in the score section"
                )
            close = difflib.get_close_matches(f.column, cols, n=1, cutoff=0.5)
            raise ConfigError(
                f"filters[{i}].column: {f.column!r} is not a column of the table; "
                + (f"did you mean {close[0]!r}? " if close else "")
                + f"columns: {', '.join(c for c in cols if not c.startswith('nf_'))}"
            )
        stages.append(Threshold(f.column, f.op, f.value, name=f.label))
        applied.append({"name": f.label, "column": f.column, "op": f.op, "value": f.value})
    return (apply_filters(table, stages) if stages else table), applied


def _counts_frame(part: pd.DataFrame) -> pd.DataFrame:
    """The ledger counts of one partition as a one-row frame (JSON text), to add up on the driver."""
    from nemo_frames.ledger import counts

    return pd.DataFrame({"counts": [json.dumps(counts(part))]})


def _write_frame(df: pd.DataFrame, path: str) -> None:
    import pyarrow.parquet as pq

    from nemo_frames.io.parquet import table_from_pandas

    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table_from_pandas(df.reset_index(drop=True)), tmp)
    os.replace(tmp, path)


def _semantic_workdir(cfg: PipelineConfig, out_dir: str, upstream: str, *, overwrite: bool) -> str:
    """The semantic dedup's resume directory for this exact input: ``semantic_work/<hash>``.

    The hash covers everything that decides which rows reach the semantic dedup and with what
    (the score checkpoint, filters, earlier dedups, the semantic settings), so changing a filter
    threshold and rerunning starts a fresh directory instead of reusing stale clusters. Work
    directories of other configs are removed: they are caches, not results.
    """
    import shutil

    from nemo_frames.io.commit import config_hash

    d = cfg.dedup
    key = config_hash({
        "upstream": upstream,
        "filters": [dataclasses.asdict(f) for f in cfg.filters],
        "exact": d.exact,
        "perceptual": dataclasses.asdict(d.perceptual) if d.perceptual is not None else None,
        "semantic": dataclasses.asdict(d.semantic) if d.semantic is not None else None,
        "policy": d.policy,
        "score_column": d.score_column,
    })
    root = os.path.join(out_dir, "semantic_work")
    if os.path.isdir(root):
        for name in os.listdir(root):
            if overwrite or name != key:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return os.path.join(root, key)


def _dedup(
    cfg: PipelineConfig, table: Any, plan: ScorePlan, notes: list[str], client: Any, *, upstream: str, overwrite: bool
) -> tuple[Any, dict[str, Any]]:
    """Run the configured dedups in order (exact, perceptual, semantic), each on the rows still kept."""
    d = cfg.dedup
    out_dir = os.path.join(cfg.output, "dedup")
    os.makedirs(out_dir, exist_ok=True)
    info: dict[str, Any] = {}
    wanted = []
    if d.exact:
        wanted.append("exact")
    if d.perceptual is not None:
        wanted.append("perceptual")
    if d.semantic is not None:
        wanted.append("semantic")
    if not wanted:
        return table, info
    try:
        from nemo_frames import dedup as dd_mod
    except ImportError as exc:
        notes.append(f"dedup skipped: nemo_frames.dedup is not available ({exc})")
        return table, info
    cols = set(table.columns)
    policy = {"policy": d.policy, "score_column": d.score_column}
    for method in wanted:
        need = {"exact": S.CONTENT_HASH, "perceptual": S.PHASH, "semantic": S.EMBEDDING}[method]
        if need not in cols:
            why = plan.skipped_columns.get(need) or f"column {need} not computed; turn on {_PRODUCER[need]}"
            notes.append(f"dedup {method} skipped: {why}")
            continue
        if method == "exact":
            dup = dd_mod.exact_duplicates(table, **policy)
        elif method == "perceptual":
            dup = dd_mod.perceptual_duplicates(table, threshold=d.perceptual.threshold, **policy)  # type: ignore[union-attr]
        else:
            sem = d.semantic
            assert sem is not None
            skw = {"n_clusters": sem.n_clusters, "policy": sem.policy, "score_column": d.score_column,
                   "checkpoint_dir": _semantic_workdir(cfg, out_dir, upstream, overwrite=overwrite)}
            # null / NaN / zero embeddings cannot be compared: record them instead of leaving them ok
            table = dd_mod.mark_invalid_embeddings(table)
            dup = dd_mod.semantic_duplicates(table, eps=sem.eps, mode=sem.mode, **skw)
            if sem.sweep:
                try:
                    sweep = dd_mod.eps_sweep(table, list(sem.sweep), **skw)
                    col = f"fraction_removed_{sem.mode}"
                    _write_json(os.path.join(out_dir, "eps_sweep.json"),
                                {"eps": sem.eps, "mode": sem.mode, "y": col, "rows": sweep.to_dict("records")})
                except Exception as exc:  # the sweep is a diagnostic: report it, keep the run going
                    notes.append(f"eps sweep failed: {type(exc).__name__}: {exc}")
            if plan.random_weights:
                notes.append("semantic dedup ran on embeddings from RANDOM CLIP weights: its groups are meaningless")
        _write_frame(dup, os.path.join(out_dir, f"{method}.parquet"))
        info[method] = int((~dup["is_survivor"]).sum()) if len(dup) else 0
        if len(dup):
            table = dd_mod.drop_duplicates(table, dup)
            if not cfg.score.checkpoint:
                # Without a checkpoint the table's graph holds the score pass: keep its result instead of
                # rescoring for every later stage. With one, the marks are recomputed from the Parquet
                # checkpoint (cheap), so worker memory does not grow with the dataset.
                table = client.persist(table) if client is not None else table.persist()
    return table, info


def _summary(
    cfg: PipelineConfig, c: dict[str, Any], timer: StageTimer, export: Any, extra: dict[str, Any]
) -> dict[str, Any]:
    st = c["by_status"]
    reasons = c["filtered_by_reason"]
    dups = {k[len("dedup_"):]: v for k, v in reasons.items() if k.startswith("dedup_")}
    out: dict[str, Any] = {
        "complete": True,
        "output": os.path.abspath(cfg.output),
        "samples_in": c["samples"],
        "kept": int(st.get("ok", 0)),
        "filtered": int(st.get("filtered", 0)),
        "errors": int(st.get("error", 0)),
        "filtered_by_reason": reasons,
        "errors_by_code": c["errors_by_code"],
        "duplicates_removed": dups,
    }
    if export is not None:
        out["written"] = int(export.samples)
        out["export"] = {
            "path": export.path,
            "shards": len(export.shards),
            "written_now": export.written,
            "resumed": export.skipped,
            "tar_bytes": export.tar_bytes,
            "errors_by_code": export.stats.get("export_errors_by_code", {}),
        }
    out.update(extra)
    out["seconds"] = {k: round(v, 3) for k, v in timer.seconds.items()}
    return out


# --------------------------------------------------------------------------- entry point
def curate(
    config: PipelineConfig | dict[str, Any] | str | os.PathLike[str],
    *,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> RunResult:
    """Run the curation pipeline from a config: scan, score, filter, dedup, export, summary, report.

    Parameters
    ----------
    config : PipelineConfig, dict or path
        A config object, a dict, or the path of a YAML file (see ``configs/demo.yaml``).
    client : distributed.Client, optional
        Run on this client (a notebook's cluster); default: start the one in ``cluster``.
    overwrite : bool
        Discard earlier results in the run directory (scores and export) instead of resuming.
    progress : bool
        Progress bars, notes and the summary table on stderr.
    **overrides
        Dotted config keys to override, e.g. ``**{"export.enabled": False}``.

    Returns
    -------
    RunResult
        ``summary`` (also ``<output>/summary.json``), ``report`` (path of the HTML report),
        ``export`` (what was written), ``table()`` (the final ledger table).

    Examples
    --------
    >>> import nemo_frames
    >>> result = nemo_frames.curate("configs/demo.yaml")  # doctest: +SKIP
    >>> result.summary["kept"], result.summary["filtered_by_reason"]  # doctest: +SKIP
    (23, {'blur': 6, 'dedup_exact': 4, 'dedup_perceptual': 5, 'qr': 3})
    """
    cfg = load_config(config, **overrides)
    t_start = time.perf_counter()
    # The input is resolved first: a pattern that matches nothing fails before the run directory or its
    # config.yaml exist (a typo must not leave an empty run behind).
    urls = _input_urls(cfg)
    os.makedirs(cfg.output, exist_ok=True)
    with _run_locks(cfg) as lock:
        _invalidate_summary(cfg, lock)
        return _curate(cfg, urls, t_start, client=client, overwrite=overwrite, progress=progress)


@contextlib.contextmanager
def _run_locks(cfg: PipelineConfig) -> Iterator[dict[str, Any]]:
    """Exclusive locks on the run directory and on a local export directory outside it.

    Two runs on one directory would sweep each other's temporaries and interleave ``table/``
    and ``summary.json``. An export path on an object store cannot be locked; there the commit
    protocol's exclusive markers keep racing exports correct (docs/io.md).
    """
    from nemo_frames.io.commit import directory_lock

    with contextlib.ExitStack() as stack:
        info = stack.enter_context(directory_lock(cfg.output, what="curate"))
        exp = cfg.export.path
        if cfg.export.enabled and exp and ("://" not in exp or exp.startswith("file://")):
            exp = os.path.abspath(exp.removeprefix("file://"))
            if os.path.relpath(exp, os.path.abspath(cfg.output)).startswith(".."):
                stack.enter_context(directory_lock(exp, what="curate (export.path)"))
        yield info


def _invalidate_summary(cfg: PipelineConfig, lock: dict[str, Any]) -> None:
    """Mark an earlier ``summary.json`` incomplete before anything it describes is rewritten.

    A run killed while rewriting ``table/`` or the export must not leave a summary that says the
    directory holds a finished run; the final summary is written (``"complete": true``) at the end.
    """
    path = os.path.join(cfg.output, "summary.json")
    if os.path.exists(path):
        _write_json(path, {
            "complete": False,
            "output": os.path.abspath(cfg.output),
            "note": "a curate run started on this directory and has not finished (still running, or killed); "
                    "its results are incomplete until it writes this file again",
            "run": lock,
        })


def _curate(
    cfg: PipelineConfig, urls: list[str], t_start: float, *, client: Any, overwrite: bool, progress: bool
) -> RunResult:
    timer = StageTimer()
    notes: list[str] = []
    _write_config(cfg)
    with _client_for(cfg, client) as cl:
        with timer("scan"):
            scanned = _scan(cfg)
        _say(f"scan: {len(urls)} shard(s) in {scanned.npartitions} partition(s)", quiet=not progress)
        with timer("plan"):
            plan = plan_score(cfg, shards=[u.rsplit("#", 1)[0] for u in urls])
        notes += plan.notes
        for n_ in plan.notes:
            _say(n_, quiet=not progress)
        with timer("score"):
            table, score_info = _score_stage(
                cfg, scanned, plan, urls, overwrite=overwrite, progress=progress, client=cl
            )
        with timer("keys"):
            table, key_info = _repeated_keys(cfg, table, urls, cl, notes, progress=progress)
        with timer("filter"):
            table, applied = _filters(cfg, table, plan, notes)
        with timer("dedup"):
            # With a score checkpoint its config hash names the scored rows; without one, the scores
            # are recomputed, so the score settings and the input shards stand for them.
            from nemo_frames.io.commit import config_hash

            upstream = score_info.get("config_hash") or config_hash(_score_fingerprint(cfg, plan, urls))
            upstream = f"{upstream}|duplicate_keys={cfg.input.duplicate_keys}"
            table, dedup_info = _dedup(cfg, table, plan, notes, cl, upstream=upstream, overwrite=overwrite)
        with timer("ledger"):
            import dask

            from nemo_frames.io.parquet import write_parquet

            slim = table.drop(columns=[c for c in _HEAVY if c in table.columns])
            write = write_parquet(slim, os.path.join(cfg.output, "table"), overwrite=True, compute=False)
            from nemo_frames.ledger import merge_counts

            # One pass over the scored table: the write and the ledger counts share its read. Counts
            # are per partition, added up here: the driver holds a few dicts, never the ledger's rows.
            per_part = slim[[S.STATUS, S.ERROR, S.REASON]].map_partitions(
                _counts_frame, meta=pd.DataFrame({"counts": pd.Series([], dtype=object)})
            )
            _, per_part = dask.compute(write, per_part)
            ledger_counts = merge_counts([json.loads(c) for c in per_part["counts"]])
        export = None
        if cfg.export.enabled:
            with timer("export"):
                export = _export(cfg, table, overwrite=overwrite, progress=progress)
        score_columns = [c for c in SCORE_COLUMNS if c in table.columns]
        # Release persisted partitions before the cluster closes (else it warns about losing them).
        del table, scanned
    extra = {
        "config": cfg.to_dict(),
        "filters": applied,
        "skipped": plan.skipped_columns,
        "notes": notes,
        "score": score_info,
        "dedup_groups_removed": dedup_info,
        "duplicate_keys": key_info,
        "random_clip_weights": plan.random_weights,
        "score_columns": score_columns,
    }
    timer.seconds["total"] = time.perf_counter() - t_start
    summary = _summary(cfg, ledger_counts, timer, export, extra)
    _write_json(os.path.join(cfg.output, "summary.json"), summary)
    report_path = None
    if cfg.report.enabled:
        from nemo_frames.report import write_report

        t0 = time.perf_counter()
        report_path = str(write_report(cfg.output, per_grid=cfg.report.per_grid, thumb_px=cfg.report.thumb_px))
        summary["seconds"]["report"] = round(time.perf_counter() - t0, 3)
        _write_json(os.path.join(cfg.output, "summary.json"), summary)
    if progress:
        print_summary(summary)
        if report_path:
            _say(f"report: {report_path}")
        _say(f"explore the run: nemo-frames explore {cfg.output}")
    return RunResult(config=cfg, output=cfg.output, summary=summary, export=export, report=report_path)


def _export(cfg: PipelineConfig, table: Any, *, overwrite: bool, progress: bool) -> Any:
    from nemo_frames.io.commit import ConfigMismatchError
    from nemo_frames.io.export import write_webdataset

    path = cfg.export.path or os.path.join(cfg.output, "shards")
    try:
        return write_webdataset(
            table.drop(columns=[c for c in _HEAVY if c in table.columns]),
            path,
            samples_per_shard=cfg.export.samples_per_shard,
            members=cfg.export.members,
            write_index=cfg.export.index,
            read_storage_options=cfg.input.storage_options or None,
            on_error=cfg.on_error,
            overwrite=overwrite or cfg.export.overwrite,
            progress=progress,
        )
    except ConfigMismatchError as exc:
        raise ConfigError(
            f"export: {path} holds shards written from other kept rows or options ({exc}); the filters, dedup or "
            "export options changed since. Set export.overwrite: true (or --set export.overwrite=true) to rewrite it, "
            "or set export.path to a new directory."
        ) from None


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=str, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def _write_config(cfg: PipelineConfig) -> None:
    import yaml

    path = os.path.join(cfg.output, "config.yaml")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=str)), fh, sort_keys=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- command line
def curate_command(args: argparse.Namespace) -> int:
    """``nemo-frames curate CONFIG``: run the pipeline; exit code 0, 2 for a config error, 3 when
    another run holds the output directory.

    The CLI's common options map onto the config: ``--workers N`` → ``cluster.options.n_workers``,
    ``--address URL`` → ``cluster.kind: address``, ``--storage-options`` → ``input.storage_options``.
    """
    from nemo_frames.io.commit import DirectoryLockedError

    quiet = bool(getattr(args, "quiet", False))
    try:
        overrides = dict(parse_override(o) for o in args.overrides)
        if getattr(args, "workers", None):
            overrides["cluster.options.n_workers"] = args.workers
        if getattr(args, "address", None):
            overrides["cluster.kind"] = "address"
            overrides["cluster.options.address"] = args.address
        if getattr(args, "storage_options", None):
            overrides["input.storage_options"] = args.storage_options
        progress = not (quiet or getattr(args, "no_progress", False))
        result = curate(args.config, overwrite=args.overwrite, progress=progress, **overrides)
    except ConfigError as exc:
        print(f"nemo-frames curate: config error: {exc}", file=sys.stderr)
        return 2
    except DirectoryLockedError as exc:
        print(f"nemo-frames curate: {exc}", file=sys.stderr)
        return 3
    if quiet:
        print(json.dumps({k: result.summary[k] for k in ("samples_in", "kept", "filtered", "errors")}))
    return 0


if __name__ == "__main__":  # python -m nemo_frames.pipeline CONFIG == nemo-frames curate CONFIG
    from nemo_frames.cli import main as _cli_main

    raise SystemExit(_cli_main(["curate", *sys.argv[1:]]))
