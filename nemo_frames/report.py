"""The run report: one self-contained HTML page (inline CSS, SVG charts, base64 thumbnails).

:func:`write_report` reads a run directory written by :func:`nemo_frames.pipeline.curate`
(``summary.json``, ``table/``, ``dedup/``) and writes ``report.html`` beside them. The
page needs no network and no server: open it from disk or attach it to a ticket.

Sections: the summary (counts, reasons, error codes, time per stage, notes), a
histogram of every score column with the thresholds drawn, image grids of what each
filter dropped and kept (nearest the threshold first: the cases worth looking at),
errored samples, duplicate groups side by side with the survivor marked, and the
eps sweep of semantic dedup. Thumbnails are fetched by locator from the input shards,
so the shards must still be readable when the report is built.

Command line: ``nemo-frames report RUN_DIR``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # registers pa.compute

from nemo_frames import schema as S

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2125;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:16px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{padding:8px 28px 40px;max-width:1400px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #dde2e8;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 3px #0002;min-width:120px}
.card b{display:block;font-size:24px}.card span{font-size:12px;color:#5a6570}
.card.ok b{color:#1e7b34}.card.filtered b{color:#a86400}.card.error b{color:#b3261e}
table.t{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 16px 6px 0;display:inline-table;vertical-align:top}
table.t th,table.t td{border:1px solid #dde2e8;padding:3px 10px;text-align:left}table.t td.n{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:14px}.chart{background:#fff;border-radius:8px;padding:8px;box-shadow:0 1px 3px #0002}
.grid{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0 14px}
figure{margin:0;background:#fff;border-radius:6px;padding:4px;box-shadow:0 1px 2px #0002;width:136px;font-size:11px}
figure img{display:block;max-width:128px;max-height:128px;margin:0 auto}
figure figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;margin-top:3px}
figure.drop{border-top:3px solid #a86400}figure.keep{border-top:3px solid #1e7b34}figure.err{border-top:3px solid #b3261e}
figure.survivor{outline:3px solid #1e7b34}figure.dup{opacity:.85}
.badge{display:inline-block;font-size:10px;padding:0 5px;border-radius:8px;color:#fff;background:#1e7b34;margin-right:3px}
.badge.dup{background:#a86400}
.group{display:flex;gap:8px;align-items:flex-start;background:#eef1f5;border-radius:8px;padding:6px;margin:6px 0;flex-wrap:wrap}
.group .label{font-size:12px;width:120px;color:#5a6570}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0;font-size:13px}
.noimg{width:128px;height:64px;display:flex;align-items:center;justify-content:center;color:#999;background:#f0f0f0}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
"""

_JS = """
document.querySelectorAll('figure').forEach(function(f){f.addEventListener('click',function(){
  var t=f.getAttribute('title'); if(t){navigator.clipboard&&navigator.clipboard.writeText(t).catch(function(){});}});});
"""


# --------------------------------------------------------------------------- SVG charts
def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def histogram_svg(
    values: Sequence[float] | np.ndarray,
    *,
    kept: Sequence[bool] | np.ndarray | None = None,
    thresholds: Sequence[tuple[float, str]] = (),
    title: str = "",
    bins: int = 30,
    width: int = 420,
    height: int = 200,
) -> str:
    """An inline SVG histogram; bars split into kept (green) and not kept (grey), thresholds as red lines.

    Examples
    --------
    >>> svg = histogram_svg([1.0, 2.0, 2.5, 9.0], thresholds=[(2.0, ">= 2")], title="blur_score")
    >>> svg.startswith("<svg") and "blur_score" in svg and svg.count("<rect") >= 4
    True
    """
    v = np.asarray(values, dtype="float64")
    k = np.ones(len(v), bool) if kept is None else np.asarray(kept, bool)
    fin = np.isfinite(v)
    v, k = v[fin], k[fin]
    ml, mr, mt, mb = 44, 12, 24, 34
    pw, ph = width - ml - mr, height - mt - mb
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}" font-family="sans-serif" font-size="10">',
             f'<text x="{ml}" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>']
    if len(v) == 0:
        parts.append(f'<text x="{ml}" y="{mt + ph / 2}">no values</text></svg>')
        return "".join(parts)
    lo, hi = float(v.min()), float(v.max())
    for t, _ in thresholds:
        if math.isfinite(t):
            lo, hi = min(lo, t), max(hi, t)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.03
    lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)
    c_all, _ = np.histogram(v, edges)
    c_keep, _ = np.histogram(v[k], edges)
    top = max(int(c_all.max()), 1)

    def x(val: float) -> float:
        return ml + (val - lo) / (hi - lo) * pw

    bw = pw / bins
    for i in range(bins):
        for count, color, base in ((c_all[i] - c_keep[i], "#9aa5b1", c_keep[i]), (c_keep[i], "#3c9a5f", 0)):
            if count <= 0:
                continue
            h = count / top * ph
            y = mt + ph - (base / top * ph) - h
            parts.append(f'<rect x="{ml + i * bw + 0.5:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{color}"><title>{_fmt(edges[i])}..{_fmt(edges[i + 1])}: {int(count)}</title></rect>')
    parts.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>')
    parts.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>')
    for val in (lo + pad, (lo + hi) / 2, hi - pad):
        parts.append(f'<text x="{x(val):.1f}" y="{mt + ph + 14}" text-anchor="middle">{_fmt(val)}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end">{top}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>')
    for t, label in thresholds:
        if not math.isfinite(t):
            continue
        parts.append(f'<line x1="{x(t):.1f}" y1="{mt - 4}" x2="{x(t):.1f}" y2="{mt + ph}" stroke="#d0342c" '
                     f'stroke-width="2" stroke-dasharray="5,3"/>')
        parts.append(f'<text x="{x(t) + 3:.1f}" y="{mt + 6}" fill="#d0342c">{html.escape(label)}</text>')
    parts.append(f'<text x="{ml + pw}" y="{height - 4}" text-anchor="end" fill="#555">n={len(v)}; green: kept</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_svg(
    xs: Sequence[float], ys: Sequence[float], *, title: str = "", xlabel: str = "", ylabel: str = "",
    mark: float | None = None, width: int = 420, height: int = 220,
) -> str:
    """An inline SVG line chart with points (used for the eps sweep), optional vertical mark.

    Examples
    --------
    >>> line_svg([0.01, 0.05, 0.1], [0.0, 0.1, 0.3], title="eps sweep").count("<circle")
    3
    """
    ml, mr, mt, mb = 48, 14, 24, 38
    pw, ph = width - ml - mr, height - mt - mb
    xv, yv = np.asarray(xs, float), np.asarray(ys, float)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}" font-family="sans-serif" font-size="10">',
             f'<text x="{ml}" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>']
    if len(xv) == 0:
        return "".join([*parts, "<text x='50' y='60'>no data</text></svg>"])
    x0, x1 = float(xv.min()), float(xv.max())
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = max(float(yv.max()), 1e-9)

    def px(a: float) -> float:
        return ml + (a - x0) / (x1 - x0) * pw

    def py(b: float) -> float:
        return mt + ph - b / y1 * ph

    pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xv, yv, strict=True))
    parts.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>')
    parts.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>')
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#1f3a5f" stroke-width="2"/>')
    for a, b in zip(xv, yv, strict=True):
        parts.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="#1f3a5f"><title>{_fmt(a)}: {_fmt(b)}</title></circle>')
        parts.append(f'<text x="{px(a):.1f}" y="{mt + ph + 13}" text-anchor="middle">{_fmt(a)}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end">{_fmt(y1)}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>')
    if mark is not None and x0 <= mark <= x1:
        parts.append(f'<line x1="{px(mark):.1f}" y1="{mt}" x2="{px(mark):.1f}" y2="{mt + ph}" stroke="#d0342c" '
                     'stroke-dasharray="5,3" stroke-width="2"/>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{mt + ph / 2}" transform="rotate(-90 12 {mt + ph / 2})" text-anchor="middle">'
                 f'{html.escape(ylabel)}</text></svg>')
    return "".join(parts)


# --------------------------------------------------------------------------- thumbnails
def thumbnails(
    rows: pd.DataFrame, *, thumb_px: int = 128, storage_options: dict[str, Any] | None = None
) -> dict[str, str | None]:
    """``key → data:image/jpeg;base64,...`` thumbnails (≤ ``thumb_px``) fetched by locator; None where unreadable."""

    from nemo_frames.io.fetch import read_ranges

    out: dict[str, str | None] = {}
    by_src: dict[str, list[int]] = defaultdict(list)
    keys = rows[S.KEY].astype(object).tolist()
    srcs = rows[S.SOURCE].astype(object).tolist()
    offs = rows[S.IMAGE_OFFSET].tolist()
    sizes = rows[S.IMAGE_SIZE].tolist()
    for i, src in enumerate(srcs):
        if isinstance(src, str) and pd.notna(offs[i]) and pd.notna(sizes[i]):
            by_src[src].append(i)
        else:
            out[keys[i]] = None
    for src, idx in by_src.items():
        try:
            blobs = read_ranges(src, [(int(offs[i]), int(sizes[i])) for i in idx], storage_options=storage_options)
        except OSError:
            blobs = [None] * len(idx)  # type: ignore[list-item]
        for i, blob in zip(idx, blobs, strict=True):
            out[keys[i]] = _thumb(blob, thumb_px) if blob else None
    return out


def jpeg_thumbnail(blob: bytes, px: int, *, quality: int = 80, draft_scale: int = 2,
                   max_pixels: int | None = None) -> bytes | None:
    """``blob`` decoded and re-encoded as a JPEG no larger than ``px``; None when it does not decode.

    The decoder downscales JPEGs in the DCT domain first (``draft`` at ``draft_scale × px``), which
    is what makes thumbnails of large photos cheap. ``max_pixels`` refuses larger images unread.
    Shared by the report and the explorer.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                return None
            im.draft("RGB", (px * draft_scale, px * draft_scale))
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
    except Exception:  # a broken image shows as a grey box; its error is in the ledger
        return None
    return buf.getvalue()


def _thumb(blob: bytes, px: int) -> str | None:
    jpg = jpeg_thumbnail(blob, px)
    return None if jpg is None else "data:image/jpeg;base64," + base64.b64encode(jpg).decode("ascii")


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``part.2`` before ``part.10`` (the order Dask numbered the files in)."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------- page pieces
def _esc(v: Any) -> str:
    if v is None or isinstance(v, str):
        return html.escape(v or "")
    if pd.api.types.is_list_like(v) and not isinstance(v, dict):
        # input.urls given as a YAML list: pd.isna on a list is an array, whose truth value is an error.
        return html.escape(", ".join(str(x) for x in v))
    return html.escape("" if pd.isna(v) else str(v))


def _figure(key: str, src: str | None, cls: str, lines: Sequence[str], badge: str = "") -> str:
    title = _esc(" | ".join([key, *lines]))
    img = f'<img src="{src}" alt="{_esc(key)}" loading="eager">' if src else '<div class="noimg">no image</div>'
    cap = "".join(f"<figcaption>{_esc(line)}</figcaption>" for line in [key, *lines][:3])
    return f'<figure class="{cls}" title="{title}">{badge}{img}{cap}</figure>'


def show_grid(
    df: Any, *, n: int = 16, columns: Sequence[str] = (), thumb_px: int = 128,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """A grid of thumbnails of the first ``n`` rows of a sample table, for notebooks.

    Returns an ``IPython.display.HTML`` object when IPython is present (it renders in Jupyter),
    else the HTML string. ``columns`` are shown under each image (with ``nf_reason`` when set).

    Examples
    --------
    >>> dropped = table[table.nf_status == "filtered"]  # doctest: +SKIP
    >>> show_grid(dropped, columns=["blur_score"])  # doctest: +SKIP
    """
    rows = df.head(n, npartitions=-1) if hasattr(df, "dask") else df.head(n)
    rows = rows[rows[S.KEY].notna()].reset_index(drop=True)
    thumbs = thumbnails(rows, thumb_px=thumb_px, storage_options=storage_options) if len(rows) else {}
    figs = []
    for r in rows.to_dict("records"):
        lines = [f"{c}={_fmt(float(r[c])) if isinstance(r[c], (int, float, np.number)) else r[c]}" for c in columns if c in r]
        if isinstance(r.get(S.REASON), str):
            lines.append(r[S.REASON])
        cls = {"ok": "keep", "filtered": "drop", "error": "err"}.get(str(r.get(S.STATUS, "ok")), "keep")
        figs.append(_figure(r[S.KEY], thumbs.get(r[S.KEY]), cls, lines))
    css = "\n".join(line for line in _CSS.splitlines() if line.startswith((".grid", "figure", ".noimg")))
    page = f"<style>{css}</style><div class='grid'>{''.join(figs) or 'no rows'}</div>"
    try:
        from IPython.display import HTML
    except ImportError:
        return page
    return HTML(page)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{_esc(v)}</td>" for v in r) + "</tr>"
        for r in rows
    )
    return f'<table class="t"><tr>{head}</tr>{body}</table>'


class RunIncompleteError(RuntimeError):
    """The run directory's ``summary.json`` is marked incomplete (a run is rewriting it, or was killed)."""


# The report reads the table in batches and keeps only bounded pieces of it: a sample for the
# histograms, the rows nearest each threshold, the first errors, and the rows it shows as thumbnails.
# Its memory is then the same for a thousand rows or a hundred million.
HIST_SAMPLE_ROWS = 200_000
_BATCH_ROWS = 65_536


def _load_summary(run_dir: Path) -> dict[str, Any]:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"report: {summary_path} not found; {run_dir} is not a run directory of nemo_frames.curate "
            "(run `nemo-frames curate CONFIG` first, or pass the `output` directory of a finished run)"
        )
    summary = json.loads(summary_path.read_text())
    if summary.get("complete") is False:
        # curate marks the summary incomplete before it rewrites table/ and the export.
        raise RunIncompleteError(
            f"report: {summary_path} says the curate run in {run_dir} has not finished (started "
            f"{(summary.get('run') or {}).get('started', '?')}; still running, or killed): table/ may be partial. "
            "Rerun `nemo-frames curate CONFIG` on it (it resumes) and report again."
        )
    return summary


def _table_files(run_dir: Path) -> list[str]:
    files = [p for p in (run_dir / "table").glob("*.parquet") if not p.name.startswith((".", "_"))]
    # The table's partition order, so the report is the same from run to run.
    return [str(p) for p in sorted(files, key=lambda p: natural_key(p.name))]


def _batches(files: list[str], columns: list[str] | None = None, filter: Any = None) -> Iterator[pd.DataFrame]:
    import pyarrow.dataset as pads

    from nemo_frames.io.parquet import to_pandas

    if not files:
        return
    ds = pads.dataset(files, format="parquet")
    cols = None if columns is None else [c for c in columns if c in ds.schema.names]
    # No read-ahead: pyarrow's default buffers many batches of several files at once, which is the
    # report's whole memory at a million rows (and more at a hundred million).
    for batch in ds.to_batches(columns=cols, filter=filter, batch_size=_BATCH_ROWS, batch_readahead=0,
                               fragment_readahead=0):
        if batch.num_rows:
            yield to_pandas(pa.Table.from_batches([batch]))


def _nearest(current: pd.DataFrame | None, new: pd.DataFrame, by: list[str], k: int) -> pd.DataFrame:
    """The ``k`` first rows of ``current`` ∪ ``new`` ordered by ``by``: a running top-k over batches."""
    both = new if current is None or not len(current) else pd.concat([current, new], ignore_index=True)
    return both.sort_values(by, na_position="last", kind="stable").head(k).reset_index(drop=True)


def _scan_table(run_dir: Path, summary: dict[str, Any], per_grid: int,
                score_cols: list[str]) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame, pd.DataFrame, dict]], pd.DataFrame]:
    """One pass over ``table/``: (histogram sample, filter sections, first errors), all bounded in size."""
    import pyarrow.parquet as pq

    files = _table_files(run_dir)
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    keep_p = min(1.0, HIST_SAMPLE_ROWS / max(n_rows, 1))
    rng = np.random.default_rng(0)
    specs: dict[str, list[dict]] = {}
    for f in summary.get("filters", []):
        specs.setdefault(f["name"], []).append(f)
    samples: list[pd.DataFrame] = []
    dropped: dict[str, pd.DataFrame | None] = dict.fromkeys(specs)
    kept: dict[str, pd.DataFrame | None] = dict.fromkeys(specs)
    errors: pd.DataFrame | None = None
    for part in _batches(files):
        part = part[part[S.KEY].notna()]
        if not len(part):
            continue
        pick = rng.random(len(part)) < keep_p
        samples.append(part.loc[pick, [c for c in [*score_cols, S.STATUS] if c in part.columns]])
        reason = part[S.REASON].astype(object).map(lambda r: r.split(":", 1)[0] if isinstance(r, str) else None)
        for name, fs in specs.items():
            cols_of = [g["column"] for g in fs if g["column"] in part.columns]
            if len(cols_of) < len(fs):
                continue
            dist = np.min(np.stack([np.abs(pd.to_numeric(part[g["column"]], errors="coerce").astype("float64").to_numpy()
                                           - float(g["value"])) for g in fs]), axis=0)
            t = part.assign(_dist=dist)
            dropped[name] = _nearest(dropped[name], t[(reason == name).to_numpy()], ["_dist", S.KEY], per_grid)
            ok = (t[S.STATUS] == "ok") & t[cols_of].notna().all(axis=1)
            kept[name] = _nearest(kept[name], t[ok.to_numpy()], ["_dist", S.KEY], per_grid)
        errors = _nearest(errors, part[(part[S.STATUS] == "error").to_numpy()], [S.KEY], per_grid)
    sample = pd.concat(samples, ignore_index=True) if samples else pd.DataFrame(columns=[*score_cols, S.STATUS])
    sections = [(name, dropped[name], kept[name], specs[name][0]) for name in specs
                if dropped[name] is not None and kept[name] is not None]
    if errors is None:
        errors = pd.DataFrame(columns=[S.KEY, S.STATUS, S.ERROR])
    return sample, sections, errors


def _rows_for_keys(run_dir: Path, keys: Sequence[str]) -> pd.DataFrame:
    """The table rows of ``keys`` (a few dozen: the duplicate groups shown), read with a pushed-down filter."""
    import pyarrow.dataset as pads

    if not keys:
        return pd.DataFrame()
    parts = list(_batches(_table_files(run_dir), filter=pads.field(S.KEY).isin(list(keys))))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _first_groups(path: Path, n_groups: int) -> list[pd.DataFrame]:
    """The first ``n_groups`` duplicate groups (by ``group_id``) of a dedup table, survivor first."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["group_id"]).column("group_id")
    if not len(ids):
        return []
    first = sorted(set(pa.compute.unique(ids).to_pylist()) - {None})[:n_groups]
    dup = pads.dataset(str(path), format="parquet").to_table(filter=pads.field("group_id").isin(first)).to_pandas()
    return [g.sort_values(["is_survivor", "key"], ascending=[False, True]) for _, g in dup.groupby("group_id", sort=True)]


def build_report(run_dir: str | os.PathLike[str], *, per_grid: int = 16, thumb_px: int = 128,
                 storage_options: dict[str, Any] | None = None) -> str:
    """The report of a run directory as one HTML string (see :func:`write_report`)."""
    run = Path(run_dir)
    summary = _load_summary(run)
    if storage_options is None:
        storage_options = ((summary.get("config") or {}).get("input") or {}).get("storage_options") or None
    filters = summary.get("filters", [])
    score_cols = list(summary.get("score_columns", []))
    sample, sections, errors = _scan_table(run, summary, per_grid, score_cols)
    score_cols = [c for c in score_cols if c in sample.columns]
    thumbs_for: list[pd.DataFrame] = [d for _, dropped, kept, _ in sections for d in (dropped, kept)] + [errors]
    dup_tables = {}
    groups_shown: dict[str, list[pd.DataFrame]] = {}
    for method in ("exact", "perceptual", "semantic"):
        p = run / "dedup" / f"{method}.parquet"
        if not p.is_file():
            continue
        import pyarrow.parquet as pq

        meta = pq.read_table(p, columns=["is_survivor", "group_id"])
        dup_tables[method] = (int(pa.compute.sum(pa.compute.invert(meta.column("is_survivor"))).as_py() or 0),
                              int(pa.compute.count_distinct(meta.column("group_id")).as_py() or 0))
        gs = _first_groups(p, max(per_grid // 2, 4))
        if gs:
            groups_shown[method] = gs
    group_keys = sorted({k for gs in groups_shown.values() for g in gs for k in g["key"].astype(object)})
    thumbs_for.append(_rows_for_keys(run, group_keys))
    need = pd.concat([d for d in thumbs_for if len(d)], ignore_index=True) if any(len(d) for d in thumbs_for) else None
    thumbs = {}
    if need is not None and S.SOURCE in need.columns:
        need = need.drop_duplicates(S.KEY)
        thumbs = thumbnails(need, thumb_px=thumb_px, storage_options=storage_options)

    h: list[str] = []
    cfg = summary.get("config", {})
    h.append(f"<header><h1>nemo_frames run report</h1><p>{_esc(summary.get('output'))} — input "
             f"{_esc((cfg.get('input') or {}).get('urls'))}</p></header><main>")
    # Summary
    n = max(int(summary.get("samples_in", 0)), 1)
    cards = [("samples in", summary.get("samples_in", 0), ""), ("kept", summary.get("kept", 0), "ok"),
             ("filtered", summary.get("filtered", 0), "filtered"), ("errors", summary.get("errors", 0), "error")]
    if "written" in summary:
        cards.insert(2, ("written to shards", summary["written"], "ok"))
    dups = int(sum(summary.get("duplicates_removed", {}).values()))
    if dups:
        cards.insert(-1, ("duplicates removed", dups, "filtered"))
    h.append("<h2 id='summary'>Summary</h2><div class='cards'>")
    for label, value, cls in cards:
        pct = "" if label == "samples in" else f" ({100 * int(value) / n:.1f}%)"
        h.append(f"<div class='card {cls}'><b>{int(value):,}</b><span>{_esc(label)}{pct}</span></div>")
    h.append("</div>")
    h.append(_table([(k, int(v)) for k, v in summary.get("filtered_by_reason", {}).items()] or [("none", 0)],
                    ("filtered by reason", "rows")))
    h.append(_table([(k, int(v)) for k, v in summary.get("errors_by_code", {}).items()] or [("none", 0)],
                    ("errors by code", "rows")))
    h.append(_table([(k, f"{v:.2f} s") for k, v in summary.get("seconds", {}).items()], ("stage", "time")))
    if filters:
        h.append(_table([(f["name"], f"{f['column']} {f['op']} {f['value']:g}") for f in filters], ("filter", "keeps")))
    for note in summary.get("notes", []):
        h.append(f"<div class='note'>{_esc(note)}</div>")
    # Histograms
    if score_cols:
        h.append("<h2 id='scores'>Score distributions</h2><div class='charts'>")
        if len(sample) < summary.get("samples_in", 0):
            h.append(f"<p>From a uniform sample of {len(sample):,} rows.</p>")
        for col in score_cols:
            vals = pd.to_numeric(sample[col], errors="coerce").astype("float64").to_numpy()
            thr = [(float(f["value"]), f"{f['op']} {f['value']:g}") for f in filters if f["column"] == col]
            h.append("<div class='chart'>" + histogram_svg(vals, kept=(sample[S.STATUS] == "ok").to_numpy(),
                                                           thresholds=thr, title=col) + "</div>")
        h.append("</div>")
    # Filter grids
    if sections:
        h.append("<h2 id='filters'>What each filter dropped and kept (nearest the threshold first)</h2>")
    for name, dropped, kept, f in sections:
        col = f["column"]
        conds = " and ".join(f"{g['column']} {g['op']} {g['value']:g}" for g in filters if g["name"] == name)
        h.append(f"<h3>{_esc(name)}: keeps {_esc(conds)} — "
                 f"{int(summary.get('filtered_by_reason', {}).get(name, 0))} dropped</h3>")
        h.append("<details open><summary>dropped</summary><div class='grid'>")
        for r in dropped.itertuples(index=False):
            d = r._asdict()
            h.append(_figure(d[S.KEY], thumbs.get(d[S.KEY]), "drop", [f"{col}={_fmt(float(d[col]))}" if pd.notna(d[col]) else f"{col} missing",
                                                                       str(d.get(S.CAPTION) or "")]))
        if not len(dropped):
            h.append("<p>none</p>")
        h.append("</div></details><details open><summary>kept (closest to the threshold)</summary><div class='grid'>")
        for r in kept.itertuples(index=False):
            d = r._asdict()
            h.append(_figure(d[S.KEY], thumbs.get(d[S.KEY]), "keep", [f"{col}={_fmt(float(d[col]))}", str(d.get(S.CAPTION) or "")]))
        if not len(kept):
            h.append("<p>none</p>")
        h.append("</div></details>")
    # Errors
    if len(errors):
        h.append(f"<h2 id='errors'>Errored samples ({int(summary.get('errors', 0))})</h2><div class='grid'>")
        for r in errors.itertuples(index=False):
            d = r._asdict()
            h.append(_figure(d[S.KEY], thumbs.get(d[S.KEY]), "err", [str(d.get(S.ERROR) or "")]))
        h.append("</div>")
    # Duplicates
    if dup_tables:
        h.append("<h2 id='dedup'>Duplicate groups (survivor outlined in green)</h2>")
        h.append(_table([(m, removed, groups) for m, (removed, groups) in dup_tables.items()],
                        ("method", "removed", "groups")))
    for method, gs in groups_shown.items():
        h.append(f"<h3>{_esc(method)}</h3>")
        for g in gs:
            h.append(f"<div class='group'><div class='label'>group {_esc(g['group_id'].iloc[0])}<br>{len(g)} images</div>")
            for r in g.itertuples(index=False):
                sim = f"sim {float(r.max_similarity):.3f}" if pd.notna(r.max_similarity) else ""
                if bool(r.is_survivor):
                    h.append(_figure(r.key, thumbs.get(r.key), "survivor", ["survivor", sim], "<span class='badge'>kept</span>"))
                else:
                    h.append(_figure(r.key, thumbs.get(r.key), "dup", [f"dup of {r.matched_key}", sim],
                                     "<span class='badge dup'>removed</span>"))
            h.append("</div>")
    sweep_path = run / "dedup" / "eps_sweep.json"
    if sweep_path.is_file():
        sweep = json.loads(sweep_path.read_text())
        rows = pd.DataFrame(sweep.get("rows", []))
        ycol = sweep.get("y") if sweep.get("y") in rows.columns else next(
            (c for c in rows.columns if str(c).startswith("fraction_removed")), None)
        if len(rows) and "eps" in rows.columns and ycol:
            h.append("<h2 id='sweep'>Semantic dedup: eps sweep</h2><div class='chart' style='display:inline-block'>")
            h.append(line_svg(rows["eps"].tolist(), rows[ycol].astype(float).tolist(), title=f"{ycol} vs eps",
                              xlabel="eps (edge where cosine ≥ 1 − eps)", ylabel=ycol, mark=sweep.get("eps")))
            h.append("</div>")
    h.append("</main>")
    title = f"nemo_frames report: {_esc(Path(summary.get('output', str(run))).name)}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>{''.join(h)}<script>{_JS}</script></body></html>")


def write_report(run_dir: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, per_grid: int = 16,
                 thumb_px: int = 128, storage_options: dict[str, Any] | None = None) -> Path:
    """Write ``report.html`` for a run directory; return its path.

    Parameters
    ----------
    run_dir : path
        The ``output`` directory of a :func:`nemo_frames.curate` run.
    out : path, optional
        Where to write (default ``<run_dir>/report.html``).
    per_grid : int
        Thumbnails per image grid.
    thumb_px : int
        Longest side of a thumbnail (≤ 128).
    storage_options : dict, optional
        fsspec options to read the input shards (default: the run config's ``input.storage_options``).

    Examples
    --------
    >>> write_report("demo_out")  # doctest: +SKIP
    PosixPath('demo_out/report.html')
    """
    thumb_px = max(8, min(int(thumb_px), 128))
    page = build_report(run_dir, per_grid=per_grid, thumb_px=thumb_px, storage_options=storage_options)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- command line
def report_command(args: argparse.Namespace) -> int:
    """``nemo-frames report RUN_DIR``: write the report, print its path."""
    try:
        path = write_report(args.run_dir, out=args.out, per_grid=args.per_grid,
                            storage_options=getattr(args, "storage_options", None))
    except (FileNotFoundError, RunIncompleteError) as exc:
        print(f"nemo-frames report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
