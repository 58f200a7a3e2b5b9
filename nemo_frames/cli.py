"""The ``nemo-frames`` command line.

Subcommands live in a registry: each is a :class:`Command` (name, help, a function that
adds its arguments to an ``argparse`` parser, and a function that runs it). To add one
(``curate``, ``report``, ``score``, ``dedup``), write the two functions in this module and
decorate the runner::

    def _score_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("table")

    @command("score", help="score a table", arguments=_score_args)
    def _score(args: argparse.Namespace) -> int:
        ...
        return 0

Every subcommand also gets the common options (``--storage-options``, ``--workers``,
``--address``, ``--no-progress``, ``--debug``). Heavy imports (dask, pandas, the IO
modules) happen inside the runners, so ``nemo-frames --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, argument builder and runner (returns an exit code)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(
    name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a subcommand runner under ``name`` (see the module docstring)."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"nemo-frames: subcommand {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, arguments, run)
        return run

    return deco


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 1."""


# --------------------------------------------------------------------------- common options
def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument(
        "--storage-options",
        type=_json_arg,
        default=None,
        metavar="JSON",
        help='fsspec options for remote URLs, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'',
    )
    g.add_argument("--workers", type=int, default=None, metavar="N", help="threads of the local Dask scheduler")
    g.add_argument("--address", default=None, help="run on an existing Dask scheduler (tcp://host:port)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--debug", action="store_true", help="show full tracebacks")


@contextlib.contextmanager
def _scheduler(args: argparse.Namespace) -> Iterator[None]:
    import dask

    if args.address:
        from nemo_frames.cluster import get_client

        client = get_client("address", address=args.address)
        try:
            yield
        finally:
            client.close()
        return
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        yield


def _console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a log file): do not fold the table to rich's default 80 columns.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


# --------------------------------------------------------------------------- inspect
def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="+", help="shards: paths, globs, brace ranges, directories or fsspec URLs")
    p.add_argument("--json", action="store_true", help="print one JSON object per shard instead of a table")


def shard_summary(pdf: Any) -> Any:
    """Per-shard counts of a scanned partition: samples, statuses, members by extension, bytes, error codes."""
    from collections import Counter

    import pandas as pd

    from nemo_frames.schema import ERROR, MEMBERS, SOURCE, STATUS, error_code

    rows = []
    for src, g in pdf.groupby(SOURCE, sort=False, dropna=False):
        exts: Counter[str] = Counter()
        nbytes = 0
        for m in g[MEMBERS].dropna():
            for ext, (_, size) in json.loads(m).items():
                exts[ext] += 1
                nbytes += int(size)
        status = Counter(g[STATUS].astype(str))
        errors = Counter(c for c in map(error_code, g.loc[g[STATUS] == "error", ERROR]) if c)
        rows.append({
            "source": str(src),
            "samples": int(g["key"].notna().sum()),
            "ok": status.get("ok", 0),
            "filtered": status.get("filtered", 0),
            "error": status.get("error", 0),
            "member_bytes": nbytes,
            "members": json.dumps(dict(sorted(exts.items()))),
            "errors": json.dumps(dict(sorted(errors.items()))),
        })
    return pd.DataFrame(rows, columns=list(_SUMMARY_META))


_SUMMARY_META = {
    "source": "string",
    "samples": "int64",
    "ok": "int64",
    "filtered": "int64",
    "error": "int64",
    "member_bytes": "int64",
    "members": "string",
    "errors": "string",
}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@command("inspect", help="per-shard stats: samples, members by extension, bytes, errors by code", arguments=_inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.table import Table

    from nemo_frames.io.webdataset import read_webdataset

    ddf = read_webdataset(args.urls, storage_options=args.storage_options)
    meta = pd.DataFrame({k: pd.Series(dtype=v) for k, v in _SUMMARY_META.items()})
    with _scheduler(args), _progress(args, "inspect"):
        summary = ddf.map_partitions(shard_summary, meta=meta).compute()
    if args.json:
        for rec in summary.to_dict(orient="records"):
            rec["members"] = json.loads(rec["members"])
            rec["errors"] = json.loads(rec["errors"])
            print(json.dumps(rec, default=int))
        return 0
    sources = [str(x) for x in summary["source"]]
    prefix = os.path.commonpath(sources) if len(sources) > 1 else os.path.dirname(sources[0]) if sources else ""
    if "://" in prefix and "://" not in os.path.dirname(prefix) + "/":
        prefix = ""
    shown = [s_[len(prefix):].lstrip("/") if prefix else s_ for s_ in sources]
    table = Table(title=f"{len(summary)} shards" + (f" under {prefix}" if prefix else ""), show_footer=True)
    tot = summary[["samples", "ok", "filtered", "error", "member_bytes"]].sum()
    exts_total: dict[str, int] = {}
    errs_total: dict[str, int] = {}
    for col, acc in (("members", exts_total), ("errors", errs_total)):
        for v in summary[col]:
            for k, n in json.loads(v).items():
                acc[k] = acc.get(k, 0) + n

    def fmt(d: dict[str, int]) -> str:
        return " ".join(f"{k}:{v}" for k, v in sorted(d.items())) or "-"

    table.add_column("shard", footer="total", no_wrap=True)
    table.add_column("samples", justify="right", footer=str(int(tot["samples"])))
    table.add_column("ok", justify="right", footer=str(int(tot["ok"])))
    table.add_column("errors", justify="right", footer=str(int(tot["error"])))
    table.add_column("members", footer=fmt(exts_total))
    table.add_column("bytes", justify="right", footer=_human(float(tot["member_bytes"])))
    table.add_column("errors by code", footer=fmt(errs_total))
    for name, rec in zip(shown, summary.itertuples(index=False), strict=True):
        table.add_row(
            name, str(rec.samples), str(rec.ok), str(rec.error), fmt(json.loads(rec.members)),
            _human(float(rec.member_bytes)), fmt(json.loads(rec.errors)),
        )
    _console().print(table)
    return 0


@contextlib.contextmanager
def _progress(args: argparse.Namespace, desc: str) -> Iterator[None]:
    """A tqdm bar over Dask tasks of the local scheduler (no-op on a distributed client)."""
    if args.no_progress or args.address:
        yield
        return
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="task", total=0)

    def start_state(dsk: Any, state: Any) -> None:
        bar.total = len(state["ready"]) + len(state["waiting"]) + len(state["finished"])
        bar.refresh()

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        bar.update(1)

    try:
        with Callback(start_state=start_state, posttask=posttask):
            yield
    finally:
        bar.close()


# --------------------------------------------------------------------------- reshard
def _reshard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="+", help="input shards: paths, globs, brace ranges, directories or fsspec URLs")
    p.add_argument("--out", required=True, help="output directory (local path or fsspec URL)")
    p.add_argument("--samples-per-shard", type=int, default=1000, metavar="N")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="QUERY",
        help="keep rows matching a pandas query (e.g. \"similarity > 0.3\"); repeatable, all must hold; "
        "dropped rows are recorded with reason 'filter: QUERY'",
    )
    p.add_argument("--index", action="store_true", help="also write a DALI .idx per shard")
    p.add_argument("--members", default=None, metavar="EXTS", help="comma-separated member extensions to copy")
    p.add_argument("--no-parquet", action="store_true", help="do not write the per-shard Parquet")
    p.add_argument("--out-storage-options", type=_json_arg, default=None, metavar="JSON",
                   help="fsspec options for --out (default: --storage-options)")
    p.add_argument("--on-error", choices=("record", "raise"), default="record")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier export in --out first")


def apply_filters(ddf: Any, queries: Sequence[str]) -> Any:
    """Mark rows failing any pandas ``query`` as filtered (reason ``filter: QUERY``), in order."""
    from nemo_frames.ledger import ensure_ledger, mark_filtered

    meta = ensure_ledger(ddf._meta)
    for q in queries:
        try:
            meta.eval(q, engine="python")
        except Exception as exc:
            raise CliError(
                f"--filter {q!r} cannot be evaluated on the table ({type(exc).__name__}: {exc}). "
                f"Columns: {', '.join(map(str, meta.columns))}"
            ) from None

    def run(pdf: Any) -> Any:
        import pandas as pd

        pdf = ensure_ledger(pdf)
        for q in queries:
            # A missing value does not match the query: the row is filtered, not kept.
            keep = pd.Series(pdf.eval(q, engine="python"), index=pdf.index).astype("boolean").fillna(False)
            pdf = mark_filtered(pdf, keep.astype(bool), f"filter: {q}")
        return pdf

    return ddf.map_partitions(run, meta=meta)


@command("reshard", help="filter and rewrite shards to a new size (+ Parquet, DALI index, stats)", arguments=_reshard_args)
def _reshard(args: argparse.Namespace) -> int:
    from nemo_frames.io.export import write_webdataset
    from nemo_frames.io.webdataset import read_webdataset

    ddf = read_webdataset(args.urls, storage_options=args.storage_options)
    ddf = apply_filters(ddf, args.filter)
    out_opts = args.out_storage_options if args.out_storage_options is not None else args.storage_options
    with _scheduler(args):
        r = write_webdataset(
            ddf,
            args.out,
            samples_per_shard=args.samples_per_shard,
            members=[m.strip() for m in args.members.split(",")] if args.members else None,
            write_index=args.index,
            write_parquet=not args.no_parquet,
            storage_options=out_opts,
            read_storage_options=args.storage_options,
            on_error=args.on_error,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    final = r.stats["final"]
    print(
        f"wrote {r.samples} samples in {len(r.shards)} shards to {r.path} "
        f"({r.written} written now, {r.skipped} already done); "
        f"filtered {final['filtered']}, errors {final['error']} (see {r.path}/_errors.parquet)"
    )
    return 0


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from nemo_frames import __version__

    parser = argparse.ArgumentParser(
        prog="nemo-frames", description="Curate image and image-text datasets as Dask dataframes."
    )
    parser.add_argument("--version", action="version", version=f"nemo-frames {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        _common(p)
        p.set_defaults(_run=cmd.run)
    return parser


# --------------------------------------------------------------------------- curate, report
def _curate_args(p: argparse.ArgumentParser) -> None:
    # Defined here (not imported from nemo_frames.pipeline) so that --help stays import-light.
    p.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set export.samples_per_shard=500 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress, notes or summary table; print counts as JSON")


@command("curate", help="run the curation pipeline from a YAML config (scan, score, filter, dedup, export, report)",
         arguments=_curate_args)
def _curate(args: argparse.Namespace) -> int:
    from nemo_frames.pipeline import curate_command

    return curate_command(args)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the output directory of `nemo-frames curate`")
    p.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    p.add_argument("--per-grid", type=int, default=16, help="thumbnails per grid (default 16)")


@command("report", help="write the self-contained HTML report of a curate run", arguments=_report_args)
def _report(args: argparse.Namespace) -> int:
    from nemo_frames.report import report_command

    return report_command(args)


# --------------------------------------------------------------------------- explore
def _explore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the output directory of `nemo-frames curate` (or a directory with items/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--items", default=None, help="an interleaved item table directory (default RUN_DIR/items)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")


@command("explore", help="browse a run in a local web app: grid, filters, thresholds, duplicates, documents",
         arguments=_explore_args)
def _explore(args: argparse.Namespace) -> int:
    from nemo_frames.explore.server import explore_command

    return explore_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nemo-frames`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Examples
    --------
    >>> main(["inspect", "shards/*.tar", "--no-progress"])  # doctest: +SKIP
    0
    """
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return int(args._run(args) or 0)
    except Exception as exc:
        if args.debug:
            raise
        from nemo_frames.io.commit import ConfigMismatchError

        known = (CliError, ConfigMismatchError, FileNotFoundError, ValueError)
        name = "" if isinstance(exc, CliError) else f"{type(exc).__name__}: "
        print(f"nemo-frames {args.command}: error: {name}{exc}", file=sys.stderr)
        if not isinstance(exc, known):
            print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
