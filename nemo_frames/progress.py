"""Progress bars over Dask futures, stage timing, and the run summary table.

The bars count partitions done out of the total and show samples per second; they
work with any ``distributed`` client (local, GPU node, Slurm) because they only
watch futures as they complete.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def run_futures(
    tasks: Sequence[Any],
    *,
    desc: str,
    progress: bool = True,
    samples_of: Callable[[Any], int] | None = None,
    client: Any = None,
) -> list[Any]:
    """Compute dask ``tasks`` (delayed objects) on the client with a progress bar; results in task order.

    Parameters
    ----------
    tasks : sequence
        Dask collections or delayed objects, typically one per partition.
    desc : str
        Label of the bar (the stage name).
    progress : bool
        Show the bar (on stderr).
    samples_of : callable, optional
        Maps a task's result to the number of samples it processed, for the samples/s rate.
    client : distributed.Client, optional
        Default: the current client; without one, the tasks run on dask's local scheduler.

    Examples
    --------
    >>> import dask
    >>> run_futures([dask.delayed(sum)([1, 2]), dask.delayed(len)("abc")], desc="demo", progress=False)
    [3, 3]
    """
    import dask

    if not tasks:
        return []
    if client is None:
        try:
            from distributed import get_client

            client = get_client()
        except (ImportError, ValueError):
            client = None
    if client is None:
        # No cluster: dask's local scheduler, one bar tick at the end.
        with _bar(len(tasks), desc, progress) as bar:
            out = list(dask.compute(*tasks))
            bar.update(len(tasks))
            return out
    from distributed import as_completed

    futures = client.compute(list(tasks))
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    start = time.perf_counter()
    samples = 0
    with _bar(len(futures), desc, progress) as bar:
        for fut in as_completed(futures):
            res = fut.result()  # re-raises a task's exception here, with its traceback
            results[index[fut.key]] = res
            if samples_of is not None:
                samples += int(samples_of(res))
                rate = samples / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{samples} samples, {rate:.1f} samples/s", refresh=False)
            bar.update(1)
    return results


@contextlib.contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="part", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


class StageTimer:
    """Wall time per stage, in the order the stages ran.

    Examples
    --------
    >>> t = StageTimer()
    >>> with t("scan"):
    ...     pass
    >>> list(t.seconds)
    ['scan']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def summary_table(summary: dict[str, Any]) -> Any:
    """A ``rich`` table of a run summary (see :func:`nemo_frames.pipeline.curate`)."""
    from rich.table import Table

    t = Table(title=f"nemo_frames run: {summary.get('output', '')}", show_header=True, header_style="bold")
    t.add_column("", style="bold")
    t.add_column("count / seconds", justify="right")
    t.add_column("share", justify="right")
    n = max(int(summary.get("samples_in", 0)), 1)

    def row(label: str, value: Any, share: bool = True, style: str | None = None) -> None:
        pct = f"{100 * value / n:.1f}%" if share and isinstance(value, (int, float)) else ""
        t.add_row(label, f"{value:,}" if isinstance(value, int) else str(value), pct, style=style)

    row("samples in", int(summary.get("samples_in", 0)), share=False)
    row("kept", int(summary.get("kept", 0)), style="green")
    if "written" in summary:
        row("written to shards", int(summary["written"]))
    row("filtered", int(summary.get("filtered", 0)), style="yellow")
    for reason, c in summary.get("filtered_by_reason", {}).items():
        row(f"  {reason}", int(c))
    row("duplicates removed", int(sum(summary.get("duplicates_removed", {}).values())))
    row("errors", int(summary.get("errors", 0)), style="red")
    for code, c in summary.get("errors_by_code", {}).items():
        row(f"  {code}", int(c))
    t.add_section()
    for stage, s in summary.get("seconds", {}).items():
        t.add_row(f"time: {stage}", f"{s:.2f} s", "")
    return t


def print_summary(summary: dict[str, Any], *, file: Any = None) -> None:
    """Print the run summary table and the skipped-stage notes."""
    from rich.console import Console

    console = Console(file=file or sys.stderr)
    console.print(summary_table(summary))
    for note in summary.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, markup=True)
