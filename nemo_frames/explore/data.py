"""The explorer's query layer: a run directory loaded into an in-process DuckDB database.

The run's Parquet (``table/``, ``dedup/*.parquet``, an optional item table under ``items/``) is
copied once into DuckDB's columnar in-memory storage; then file access is switched off and the
configuration locked, so no query — whatever a browser sends — can open a file. Every request is
a parameterised SQL query that returns one page (``LIMIT``) or an aggregate: the table is never
loaded into the browser, nor into Python objects per row.

Samples are addressed by ``nf_row`` (the row number in the run's table), never by a path: image
bytes are read from the ``source`` / offset / size of that row, which the run itself wrote.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nemo_frames import schema as S
from nemo_frames.report import jpeg_thumbnail, natural_key

Op = Literal[">=", ">", "<=", "<"]
_OPS: tuple[str, ...] = (">=", ">", "<=", "<")
ROW = "nf_row"
# Columns a range filter / sort / what-if may use: the scores and sizes (and any other numeric column found).
RANGE_COLUMNS = (S.AESTHETIC_SCORE, S.NSFW_SCORE, S.BLUR_SCORE, S.QR_AREA_RATIO, S.CLIP_SCORE, S.WIDTH, S.HEIGHT,
                 S.IMAGE_SIZE)
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")
# Shown in the grid (when present); the detail view shows every column.
GRID_COLUMNS = (ROW, S.KEY, S.STATUS, S.REASON, S.ERROR, S.CAPTION, S.WIDTH, S.HEIGHT, S.AESTHETIC_SCORE,
                S.NSFW_SCORE, S.BLUR_SCORE, S.QR_AREA_RATIO, S.CLIP_SCORE)
MAX_PAGE = 500
MAX_SIDECAR = 1 << 20  # bytes of a sidecar JSON member shown in the detail view
MAX_IMAGE_PX = 2048  # the "full" image is re-encoded at most this large (never sent as the raw member)


class ExploreError(ValueError):
    """A request the explorer cannot answer (unknown column, bad number, no such row): HTTP 400/404."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _num(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ExploreError(f"{what}: expected a number, found {str(value)[:40]!r}") from None
    if not math.isfinite(v):
        raise ExploreError(f"{what}: expected a finite number, found {value!r}")
    return v


def _clean(v: Any) -> Any:
    """A JSON-safe scalar (NaN → None, numpy → Python, bytes → None)."""
    if v is None:
        return None
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "item"):
        return _clean(v.item())
    if isinstance(v, (bytes, bytearray, memoryview)):
        return None
    if isinstance(v, bool) or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if abs(v) < 2**53 else str(v)  # a 64-bit hash would lose digits as a JavaScript number
    return str(v)


@dataclass
class Query:
    """A grid query: which samples, in which order.

    Parameters
    ----------
    status : {"ok", "filtered", "error"}, optional
    reason : str, optional
        The filter name of ``nf_reason`` (the part before ``:``), e.g. ``blur`` or ``dedup_exact``.
    error : str, optional
        The error code of ``nf_error`` (the part before ``:``).
    text : str, optional
        A case-insensitive substring of the caption.
    ranges : dict
        ``column → (low, high)``, inclusive, either side may be None.
    sort : str, optional
        A numeric column (or ``key``); ``desc`` flips it. Rows without a value come last.
    """

    status: str | None = None
    reason: str | None = None
    error: str | None = None
    text: str | None = None
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    sort: str | None = None
    desc: bool = False


class Thumbs:
    """A small LRU cache of encoded thumbnails (bytes), shared by the request threads."""

    def __init__(self, capacity: int = 2048) -> None:
        self._d: OrderedDict[tuple[Any, ...], bytes | None] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def get(self, k: tuple[Any, ...]) -> tuple[bool, bytes | None]:
        with self._lock:
            if k in self._d:
                self._d.move_to_end(k)
                return True, self._d[k]
        return False, None

    def put(self, k: tuple[Any, ...], v: bytes | None) -> None:
        with self._lock:
            self._d[k] = v
            self._d.move_to_end(k)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)


def encode_image(blob: bytes, px: int) -> bytes | None:
    """``blob`` decoded and re-encoded as a JPEG no larger than ``px``; None when it does not decode.

    Re-encoding means the browser only ever receives a JPEG made here, never a member's raw bytes
    (which could be anything: HTML, SVG with scripts).
    """
    from nemo_frames.images.decode import DEFAULT_MAX_PIXELS

    return jpeg_thumbnail(blob, px, quality=85, draft_scale=1, max_pixels=DEFAULT_MAX_PIXELS)


class RunData:
    """A run directory, queryable: see the module docstring.

    Parameters
    ----------
    run_dir : path
        The ``output`` directory of :func:`nemo_frames.curate` (``summary.json``, ``table/``,
        ``dedup/``), and/or an item table under ``run_dir/items/`` (interleaved documents).
    items : path, optional
        An item table directory elsewhere (default ``run_dir/items`` when it exists).
    storage_options : dict, optional
        fsspec options to read the input shards (default: the run config's).
    memory_limit : str
        DuckDB's memory limit.
    threads : int
        DuckDB's worker threads per query.

    Examples
    --------
    >>> data = RunData("demo_out")  # doctest: +SKIP
    >>> data.samples(Query(status="filtered", reason="blur"), limit=4)["total"]  # doctest: +SKIP
    3
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, items: str | os.PathLike[str] | None = None,
                 storage_options: dict[str, Any] | None = None, memory_limit: str = "768MB", threads: int = 2) -> None:
        import duckdb

        self.run_dir = Path(run_dir).resolve()
        if not self.run_dir.is_dir():
            raise FileNotFoundError(f"explore: {run_dir} is not a directory; pass the `output` directory of a curate run")
        summary_path = self.run_dir / "summary.json"
        self.summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if storage_options is None:
            storage_options = ((self.summary.get("config") or {}).get("input") or {}).get("storage_options") or None
        self.storage_options = storage_options
        self.con = duckdb.connect(":memory:", config={"memory_limit": memory_limit, "threads": threads})
        self.thumbs = Thumbs()
        self._lock = threading.Lock()
        # Natural order (part.2 before part.10), so row numbers follow the partitions as written.
        table_files = sorted((str(p) for p in (self.run_dir / "table").glob("*.parquet")), key=natural_key)
        items_dir = Path(items).resolve() if items is not None else self.run_dir / "items"
        item_files = sorted(str(p) for p in items_dir.glob("*.parquet") if not p.name.endswith(".drops.parquet")) \
            if items_dir.is_dir() else []
        drop_files = sorted(str(p) for p in items_dir.glob("*.drops.parquet")) if items_dir.is_dir() else []
        if not (table_files or item_files or drop_files):
            raise FileNotFoundError(
                f"explore: {self.run_dir} has no table/*.parquet (a curate run) and no items/*.parquet (an item "
                "table); run `nemo-frames curate CONFIG` first and pass its `output` directory")
        self.has_samples = bool(table_files)
        self.has_items = bool(item_files or drop_files)
        if self.has_samples:
            self.con.execute(
                f"CREATE TABLE samples AS SELECT (row_number() OVER () - 1)::BIGINT AS {ROW}, * "
                "FROM read_parquet(?, union_by_name = true)", [table_files])
        self.dup_methods: list[str] = []
        dup_files = [(m, self.run_dir / "dedup" / f"{m}.parquet") for m in ("exact", "perceptual", "semantic")]
        dup_files = [(m, p) for m, p in dup_files if p.is_file()]
        self.con.execute("CREATE TABLE dups (key VARCHAR, group_id VARCHAR, is_survivor BOOLEAN, "
                         f"max_similarity DOUBLE, matched_key VARCHAR, method VARCHAR, {ROW} BIGINT)")
        for m, p in dup_files:
            self.con.execute("INSERT INTO dups SELECT key, group_id, is_survivor, max_similarity, matched_key, ?, NULL "
                             "FROM read_parquet(?)", [m, str(p)])
            self.dup_methods.append(m)
        if dup_files and self.has_samples:
            # Each member's sample row, joined once here rather than per request (the first row of a repeated key).
            self.con.execute(f"UPDATE dups SET {ROW} = s.{ROW} FROM (SELECT {S.KEY}, min({ROW}) AS {ROW} FROM samples "
                             f"GROUP BY 1) s WHERE s.{S.KEY} = dups.key")
        if self.has_items:
            self._load_items(item_files, drop_files)
        sweep = self.run_dir / "dedup" / "eps_sweep.json"
        self.sweep: dict[str, Any] | None = json.loads(sweep.read_text()) if sweep.is_file() else None
        # From here on no query can touch a file: whatever a request says, it reads these tables only.
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        self.columns: dict[str, str] = {}
        if self.has_samples:
            self.columns = {r[0]: r[1] for r in self.con.execute("DESCRIBE samples").fetchall()}
        self.numeric = [c for c, t in self.columns.items() if t.split("(")[0] in _NUMERIC and c != ROW
                        and c not in (S.IMAGE_OFFSET, S.PHASH)]
        self.sources = {r[0] for r in self.con.execute("SELECT DISTINCT source FROM samples").fetchall()} \
            if self.has_samples and S.SOURCE in self.columns else set()

    def _item_select(self, files: list[str], first_row: int) -> tuple[str, list[Any]]:
        src = "read_parquet(?, union_by_name = true, filename = true, file_row_number = true)"
        cols = {r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {src}", [files]).fetchall()}
        # Image bytes stay in the files (read per request); only whether a row has them is loaded.
        body = ("* EXCLUDE (binary_content), binary_content IS NOT NULL" if "binary_content" in cols
                else "*, FALSE") + " AS nf_has_bytes"
        status = "" if S.STATUS in cols else f", 'ok' AS {S.STATUS}"
        return (f"SELECT (row_number() OVER () - 1 + ?)::BIGINT AS nf_row, {body}{status} FROM {src}",
                [first_row, files])

    def _load_items(self, item_files: list[str], drop_files: list[str]) -> None:
        sql, params = self._item_select(item_files or drop_files, 0)
        self.con.execute(f"CREATE TABLE items AS {sql}", params)
        if item_files and drop_files:
            n_bad = self.con.execute(f"SELECT count(*) FROM items WHERE {S.STATUS} <> 'ok'").fetchone()[0]
            if n_bad == 0:  # files of `rows="ok"`: the drops live only beside them
                off = self.con.execute("SELECT count(*) FROM items").fetchone()[0]
                sql, params = self._item_select(drop_files, off)
                # Clean `rows="ok"` files carry no ledger columns (nf_error, nf_input_position, ...): add
                # the drops' extra columns, null for the kept rows, before appending the drops.
                have = {r[0] for r in self.con.execute("DESCRIBE items").fetchall()}
                for name, typ, *_ in self.con.execute(f"DESCRIBE {sql}", params).fetchall():
                    if name not in have:
                        self.con.execute(f"ALTER TABLE items ADD COLUMN {_q(name)} {typ}")
                self.con.execute(f"INSERT INTO items BY NAME {sql}", params)
        self.item_columns = {r[0]: r[1] for r in self.con.execute("DESCRIBE items").fetchall()}

    # ------------------------------------------------------------------ helpers
    def _cur(self) -> Any:
        # One cursor per call: a DuckDB connection must not be used from two threads at once, a cursor may.
        with self._lock:
            return self.con.cursor()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._cur()
        try:
            res = cur.execute(sql, list(params))
            names = [d[0] for d in res.description]
            return [{n: _clean(v) for n, v in zip(names, r, strict=True)} for r in res.fetchall()]
        finally:
            cur.close()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self._cur()
        try:
            r = cur.execute(sql, list(params)).fetchone()
            return None if r is None else r[0]
        finally:
            cur.close()

    def _need_samples(self) -> None:
        if not self.has_samples:
            raise ExploreError("this run has no sample table (table/*.parquet)", 404)

    def _col(self, name: str | None, what: str, allowed: Sequence[str]) -> str:
        if name not in allowed:
            raise ExploreError(f"{what}: unknown column {str(name)[:60]!r}; one of {', '.join(allowed)}")
        return str(name)

    def _grid_cols(self) -> str:
        return ", ".join(_q(c) for c in GRID_COLUMNS if c in self.columns or c == ROW)

    def _where(self, q: Query) -> tuple[str, list[Any]]:
        conds, params = ["TRUE"], []
        if q.status:
            if q.status not in ("ok", "filtered", "error"):
                raise ExploreError(f"status: expected ok, filtered or error, found {q.status[:20]!r}")
            conds.append(f"{S.STATUS} = ?")
            params.append(q.status)
        if q.reason:
            conds.append(f"split_part({S.REASON}, ':', 1) = ?")
            params.append(q.reason)
        if q.error:
            conds.append(f"split_part({S.ERROR}, ':', 1) = ?")
            params.append(q.error)
        if q.text and S.CAPTION in self.columns:
            conds.append(f"contains(lower({S.CAPTION}), lower(?))")
            params.append(q.text)
        for col, (lo, hi) in q.ranges.items():
            c = _q(self._col(col, "range", self.numeric))
            if lo is not None:
                conds.append(f"{c} >= ?")
                params.append(_num(lo, f"range {col} low"))
            if hi is not None:
                conds.append(f"{c} <= ?")
                params.append(_num(hi, f"range {col} high"))
        return " AND ".join(conds), params

    # ------------------------------------------------------------------ the run
    def meta(self) -> dict[str, Any]:
        """What the page needs to build its controls: counts, reasons, codes, numeric columns and ranges, filters."""
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "has_samples": self.has_samples,
                               "has_items": self.has_items, "dup_methods": self.dup_methods,
                               "filters": self.summary.get("filters", []), "sweep": self.sweep is not None,
                               "notes": self.summary.get("notes", [])}
        if self.has_samples:
            out["counts"] = {r["s"]: r["n"] for r in self._rows(
                f"SELECT {S.STATUS} AS s, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1")}
            out["total"] = sum(out["counts"].values())
            out["reasons"] = self._rows(f"SELECT split_part({S.REASON}, ':', 1) AS name, count(*) AS n FROM samples "
                                        f"WHERE {S.REASON} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1")
            out["errors"] = self._rows(f"SELECT split_part({S.ERROR}, ':', 1) AS name, count(*) AS n FROM samples "
                                       f"WHERE {S.ERROR} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1")
            if self.numeric:
                aggs = ", ".join(f"min({_q(c)})::DOUBLE, max({_q(c)})::DOUBLE" for c in self.numeric)
                cur = self._cur()
                try:
                    vals = cur.execute(f"SELECT {aggs} FROM samples").fetchone()
                finally:
                    cur.close()
                out["numeric"] = [{"name": c, "min": _clean(vals[2 * i]), "max": _clean(vals[2 * i + 1])}
                                  for i, c in enumerate(self.numeric)]
            else:
                out["numeric"] = []
            out["has_caption"] = S.CAPTION in self.columns
        return out

    def samples(self, q: Query, *, offset: int = 0, limit: int = 48) -> dict[str, Any]:
        """One page of the grid for ``q`` and the total number of matching samples."""
        self._need_samples()
        limit = max(1, min(int(limit), MAX_PAGE))
        offset = max(0, int(offset))
        where, params = self._where(q)
        order = ROW
        if q.sort:
            c = _q(self._col(q.sort, "sort", [*self.numeric, S.KEY]))
            order = f"{c} {'DESC' if q.desc else 'ASC'} NULLS LAST, {ROW}"
        total = self._one(f"SELECT count(*) FROM samples WHERE {where}", params)
        rows = self._rows(f"SELECT {self._grid_cols()} FROM samples WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                          [*params, limit, offset])
        return {"total": int(total), "offset": offset, "rows": rows}

    def row(self, row: Any) -> dict[str, Any]:
        """Every column of one sample (no embeddings: the run's table has none)."""
        self._need_samples()
        r = self._rows(f"SELECT * FROM samples WHERE {ROW} = ?", [self._row_id(row)])
        if not r:
            raise ExploreError(f"no sample with {ROW} {row}", 404)
        return r[0]

    @staticmethod
    def _row_id(row: Any) -> int:
        try:
            return int(str(row), 10)
        except ValueError:
            raise ExploreError(f"{ROW}: expected an integer, found {str(row)[:40]!r}", 404) from None

    def detail(self, row: Any) -> dict[str, Any]:
        """The sample, its sidecar JSON (read from the shard), and its duplicate groups with similarities."""
        rec = self.row(row)
        out: dict[str, Any] = {"row": rec, "sidecar": None, "groups": []}
        members = rec.get(S.MEMBERS)
        if isinstance(members, str) and rec.get(S.SOURCE) in self.sources:
            try:
                loc = json.loads(members).get("json")
            except ValueError:
                loc = None
            if loc and int(loc[1]) <= MAX_SIDECAR:
                from nemo_frames.io.fetch import read_ranges

                try:
                    blob = read_ranges(rec[S.SOURCE], [(int(loc[0]), int(loc[1]))], storage_options=self.storage_options)[0]
                    out["sidecar"] = json.loads(bytes(blob).decode("utf-8"))
                except (OSError, ValueError) as exc:
                    out["sidecar_error"] = f"{type(exc).__name__}: {exc}"
        key = rec.get(S.KEY)
        if key is not None and self.dup_methods:
            for g in self._rows("SELECT DISTINCT method, group_id FROM dups WHERE key = ? ORDER BY 1", [key]):
                members = self.group_members(g["method"], g["group_id"])
                if g["method"] == "perceptual" and S.PHASH in self.columns:
                    self._similarity_to(rec[ROW], members)
                elif g["method"] == "exact":
                    for m in members:
                        m["similarity_to_this"] = 1.0
                out["groups"].append({**g, "members": members})
        return out

    def _similarity_to(self, row: int, members: list[dict[str, Any]]) -> None:
        """``similarity_to_this`` = 1 − Hamming(pHash)/64 of each member to sample ``row`` (as perceptual dedup)."""
        rows = [m[ROW] for m in members if m.get(ROW) is not None]
        sims = dict(self._con_rows(
            f"SELECT s.{ROW}, 1 - bit_count(xor(s.{S.PHASH}, t.{S.PHASH})) / 64.0 FROM samples s, "
            f"(SELECT {S.PHASH} FROM samples WHERE {ROW} = ?) t WHERE list_contains(?, s.{ROW})", [row, rows]))
        for m in members:
            m["similarity_to_this"] = _clean(sims.get(m.get(ROW)))

    def _con_rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur = self._cur()
        try:
            return cur.execute(sql, list(params)).fetchall()
        finally:
            cur.close()

    def group_members(self, method: str, group_id: str) -> list[dict[str, Any]]:
        """The members of one duplicate group, survivor first, each with its sample row number."""
        self._col(method, "method", self.dup_methods)
        return self._rows(f"SELECT key, is_survivor, max_similarity, matched_key, {ROW} FROM dups "
                          "WHERE method = ? AND group_id = ? ORDER BY is_survivor DESC, max_similarity DESC, key",
                          [method, group_id])

    # ------------------------------------------------------------------ images
    def image(self, row: Any, px: int) -> bytes | None:
        """A JPEG of sample ``row`` no larger than ``px`` (thumbnail or full view), made from the shard by locator."""
        self._need_samples()
        px = max(16, min(int(px), MAX_IMAGE_PX))
        rid = self._row_id(row)
        hit, val = self.thumbs.get(("s", rid, px))
        if hit:
            return val
        r = self._rows(f"SELECT {S.SOURCE}, {S.IMAGE_OFFSET}, {S.IMAGE_SIZE} FROM samples WHERE {ROW} = ?", [rid])
        if not r:
            raise ExploreError(f"no sample with {ROW} {row}", 404)
        src, off, size = r[0][S.SOURCE], r[0][S.IMAGE_OFFSET], r[0][S.IMAGE_SIZE]
        out = None
        # The source must be one of the run's input shards (it comes from the run's own table).
        if src in self.sources and off is not None and size is not None:
            from nemo_frames.io.fetch import read_ranges

            try:
                blob = read_ranges(src, [(int(off), int(size))], storage_options=self.storage_options)[0]
                out = encode_image(bytes(blob), px)
            except (OSError, ValueError):
                out = None
        self.thumbs.put(("s", rid, px), out)
        return out

    # ------------------------------------------------------------------ thresholds
    def whatif(self, column: str, op: str, value: Any, *, k: int = 12) -> dict[str, Any]:
        """What ``column op value`` keeps and removes, and the samples just on each side of it.

        The scope is every sample with a value in ``column`` that did not error (a filter never
        sees errored rows). ``above`` are the kept samples nearest the threshold, ``below`` the
        removed ones nearest it.
        """
        self._need_samples()
        c = _q(self._col(column, "column", self.numeric))
        if op not in _OPS:
            raise ExploreError(f"op: expected one of {', '.join(_OPS)}, found {op[:10]!r}")
        v = _num(value, "value")
        k = max(1, min(int(k), 48))
        # As filters.Threshold: compared as float64; a missing value (null or NaN) never passes.
        scope = f"{c} IS NOT NULL AND NOT isnan({c}::DOUBLE) AND {S.STATUS} <> 'error'"
        cur = self._cur()
        try:
            n, keep = cur.execute(f"SELECT count(*), count(*) FILTER (WHERE {c}::DOUBLE {op} ?) FROM samples "
                                  f"WHERE {scope}", [v]).fetchone()
        finally:
            cur.close()
        run_keep = self._run_keep(column, op, v)
        keeps_high = op in (">=", ">")
        cols = self._grid_cols()
        kept = self._rows(f"SELECT {cols} FROM samples WHERE {scope} AND {c}::DOUBLE {op} ? ORDER BY {c} "
                          f"{'ASC' if keeps_high else 'DESC'}, {ROW} LIMIT ?", [v, k])
        removed = self._rows(f"SELECT {cols} FROM samples WHERE {scope} AND NOT ({c}::DOUBLE {op} ?) ORDER BY {c} "
                             f"{'DESC' if keeps_high else 'ASC'}, {ROW} LIMIT ?", [v, k])
        return {"column": column, "op": op, "value": v, "scope": int(n), "keep": int(keep), "remove": int(n - keep),
                "run_keep": run_keep, "run_kept_now": self.summary.get("kept"),
                "kept_nearest": kept, "removed_nearest": removed}

    def _run_keep(self, column: str, op: str, value: float) -> int | None:
        """How many samples the run would keep with this threshold in place of the run's on ``column``.

        Every threshold filter of the run is evaluated on the stored scores (this one replaced or added);
        errored samples and those removed by dedup stay removed. Dedup is not rerun: a sample it removed may
        have had its survivor dropped by the new threshold, and a sample a looser threshold lets back in is
        counted as kept though dedup might remove it; the count is exact for the threshold filters alone.
        """
        conds, params = [], []
        filters = [f for f in self.summary.get("filters", []) if f.get("column") != column]
        for f in [*filters, {"column": column, "op": op, "value": value}]:
            col, fop = f.get("column"), f.get("op")
            if col not in self.numeric or fop not in (*_OPS, "==", "!="):
                return None  # a filter this view cannot evaluate: no honest number
            qc = _q(col)
            conds.append(f"({qc} IS NOT NULL AND NOT isnan({qc}::DOUBLE) AND {qc}::DOUBLE {fop} ?)")
            params.append(float(f["value"]))
        where = " AND ".join(conds)
        return int(self._one(f"SELECT count(*) FROM samples WHERE {S.STATUS} <> 'error' AND coalesce(NOT "
                             f"starts_with({S.REASON}, 'dedup_'), TRUE) AND {where}", params))

    def quantiles(self, column: str, n: int = 100) -> list[float]:
        """``n + 1`` quantiles of ``column`` (0 … 1): the threshold slider moves through the data evenly."""
        self._need_samples()
        c = _q(self._col(column, "column", self.numeric))
        qs = [i / n for i in range(n + 1)]
        cur = self._cur()
        try:
            row = cur.execute(f"SELECT quantile_cont({c}::DOUBLE, ?::DOUBLE[]) FROM samples WHERE {c} IS NOT NULL",
                              [qs]).fetchone()
        finally:
            cur.close()
        return [float(v) for v in (row[0] or [])]

    def config_fragment(self, thresholds: Sequence[dict[str, Any]]) -> str:
        """The ``filters:`` YAML fragment for ``curate`` with these thresholds (``{column, op, value, name}``)."""
        import yaml

        items = []
        for t in thresholds:
            col = self._col(t.get("column"), "column", self.numeric or list(RANGE_COLUMNS))
            op = t.get("op")
            if op not in _OPS:
                raise ExploreError(f"op: expected one of {', '.join(_OPS)}, found {str(op)[:10]!r}")
            item: dict[str, Any] = {"column": col, "op": op, "value": _num(t.get("value"), f"value of {col}")}
            if t.get("name"):
                item["name"] = str(t["name"])[:60]
            items.append(item)
        return yaml.safe_dump({"filters": items}, sort_keys=False)

    # ------------------------------------------------------------------ duplicates
    def dup_groups(self, method: str, *, offset: int = 0, limit: int = 20, members: int = 12) -> dict[str, Any]:
        """Duplicate groups of one method, largest first, each with up to ``members`` members (survivor first)."""
        self._col(method, "method", self.dup_methods)
        limit = max(1, min(int(limit), 100))
        total = self._one("SELECT count(DISTINCT group_id) FROM dups WHERE method = ?", [method])
        groups = self._rows("SELECT group_id, count(*) AS size, min(max_similarity) AS min_similarity FROM dups "
                            "WHERE method = ? GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ? OFFSET ?",
                            [method, limit, max(0, int(offset))])
        # The members of the whole page in one query, survivor first, at most `members` per group.
        rows = self._rows(
            f"SELECT group_id, key, is_survivor, max_similarity, matched_key, {ROW} FROM (SELECT *, row_number() OVER "
            "(PARTITION BY group_id ORDER BY is_survivor DESC, max_similarity DESC, key) AS rk FROM dups "
            "WHERE method = ? AND list_contains(?, group_id)) WHERE rk <= ? ORDER BY group_id, rk",
            [method, [g["group_id"] for g in groups], max(1, int(members))])
        by_group: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_group.setdefault(r.pop("group_id"), []).append(r)
        for g in groups:
            g["members"] = by_group.get(g["group_id"], [])
        return {"method": method, "total": int(total), "groups": groups}

    def sweep_view(self, *, per_eps: int = 8) -> dict[str, Any]:
        """The eps sweep curve and, at each eps, a gallery of the pairs that join only at that eps.

        A removed member of the semantic table with similarity ``s`` to its matched key joins
        at every ``eps >= 1 - s``; the gallery of an eps shows those that join between the
        previous eps and it. The run's dup table lists pairs with similarity ≥ 1 − run eps only,
        so galleries above the run's eps are marked as not computed.
        """
        if self.sweep is None:
            raise ExploreError("this run has no eps sweep (dedup.semantic.sweep)", 404)
        rows = self.sweep.get("rows", [])
        ycol = self.sweep.get("y")
        run_eps = self.sweep.get("eps")
        eps_list = sorted(float(r["eps"]) for r in rows if "eps" in r)
        out = []
        prev = -1.0
        for e in eps_list:
            covered = run_eps is None or e <= float(run_eps) + 1e-12
            pairs = []
            if covered and "semantic" in self.dup_methods:
                pairs = self._rows(f"SELECT key, matched_key, max_similarity, {ROW} FROM dups WHERE method = "
                                   "'semantic' AND NOT is_survivor AND 1 - max_similarity <= ? AND 1 - max_similarity > ? "
                                   "ORDER BY max_similarity, key LIMIT ?", [e, prev, per_eps])
            out.append({"eps": e, "covered": covered, "pairs": pairs})
            prev = e
        return {"eps": run_eps, "y": ycol, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows],
                "galleries": out}

    # ------------------------------------------------------------------ interleaved documents
    def documents(self, *, offset: int = 0, limit: int = 50, dropped_only: bool = False,
                  text: str | None = None) -> dict[str, Any]:
        """Documents of the item table (id containing ``text``): item counts, dropped items; those with drops first."""
        if not self.has_items:
            raise ExploreError("this run has no item table (items/*.parquet)", 404)
        having = "HAVING count(*) FILTER (WHERE nf_status <> 'ok') > 0" if dropped_only else ""
        where, params = ("WHERE contains(lower(sample_id), lower(?))", [text]) if text else ("", [])
        total = self._one(f"SELECT count(*) FROM (SELECT sample_id FROM items {where} GROUP BY 1 {having})", params)
        docs = self._rows(
            "SELECT sample_id, count(*) FILTER (WHERE modality = 'text') AS texts, "
            "count(*) FILTER (WHERE modality = 'image') AS images, "
            f"count(*) FILTER (WHERE nf_status <> 'ok') AS dropped FROM items {where} GROUP BY 1 {having} "
            "ORDER BY dropped DESC, sample_id LIMIT ? OFFSET ?",
            [*params, max(1, min(int(limit), 500)), max(0, int(offset))])
        return {"total": int(total), "docs": docs}

    def document(self, sample_id: str) -> dict[str, Any]:
        """One document's items in reading order (input order: dropped items stay where they were)."""
        if not self.has_items:
            raise ExploreError("this run has no item table (items/*.parquet)", 404)
        order = "nf_input_position" if "nf_input_position" in self.item_columns else "position"
        cols = [c for c in ("nf_row", "position", "nf_input_position", "modality", "content_type", "text_content",
                            "nf_status", "nf_reason", "nf_error", "materialize_error", "blur_score", "qr_area_ratio",
                            "clip_score") if c in self.item_columns]
        items = self._rows(f"SELECT {', '.join(_q(c) for c in cols)} FROM items WHERE sample_id = ? "
                           f"ORDER BY {_q(order)} NULLS FIRST, nf_row", [sample_id])
        if not items:
            raise ExploreError(f"no document with sample_id {sample_id[:80]!r}", 404)
        items = _reading_order(items)
        # The document's own fields (url, page, passthrough columns) from its metadata row.
        skip = {"nf_row", "filename", "file_row_number", "nf_has_bytes", "binary_content", "text_content", "position",
                "nf_input_position", "modality", "sample_id"}
        meta = self._rows("SELECT * FROM items WHERE sample_id = ? AND modality = 'metadata' LIMIT 1", [sample_id])
        fields = {k: v for k, v in (meta[0] if meta else {}).items() if k not in skip and v is not None}
        return {"sample_id": sample_id, "items": items, "fields": fields}

    def item_image(self, row: Any, px: int) -> bytes | None:
        """A JPEG of image item ``row`` (from its ``binary_content`` or its ``source_ref`` locator)."""
        if not self.has_items:
            raise ExploreError("this run has no item table (items/*.parquet)", 404)
        px = max(16, min(int(px), MAX_IMAGE_PX))
        rid = self._row_id(row)
        hit, val = self.thumbs.get(("i", rid, px))
        if hit:
            return val
        r = self._rows("SELECT * FROM items WHERE nf_row = ? AND modality = 'image'", [rid])
        if not r:
            raise ExploreError(f"no image item with nf_row {row}", 404)
        rec = r[0]
        blob = None
        try:
            if rec.get("nf_has_bytes"):
                import pyarrow.parquet as pq

                # `filename` came from the run's own listing of its items directory.
                pf = pq.ParquetFile(rec["filename"])
                idx, start = int(rec["file_row_number"]), 0
                for g in range(pf.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if idx < start + n:
                        col = pf.read_row_group(g, columns=["binary_content"]).column(0)
                        blob = col[idx - start].as_py()
                        break
                    start += n
            elif rec.get("source_ref"):
                import pandas as pd

                from nemo_frames.interleaved.materialize import fetch_item_bytes

                frame = pd.DataFrame([{k: rec.get(k) for k in ("sample_id", "position", "modality", "source_ref")}])
                frame["binary_content"] = None
                frame[S.STATUS] = "ok"
                data, _ = fetch_item_bytes(frame, [True], storage_options=self.storage_options)
                blob = data[0]
        except (OSError, ValueError, KeyError):
            blob = None
        out = encode_image(blob, px) if blob else None
        self.thumbs.put(("i", rid, px), out)
        return out

    def close(self) -> None:
        self.con.close()


def _reading_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items in input order when kept rows lack ``nf_input_position`` (clean ``rows="ok"`` files).

    The kept content items were renumbered 0..k−1 in their input order, and each drop keeps its input
    position, so the kept items fill, in order, the input positions the drops do not take.
    """
    if "nf_input_position" not in (items[0] if items else {}):
        return items
    content = [it for it in items if (it.get("position") or 0) >= 0 or it.get("nf_input_position") is not None]
    if not any(it.get("nf_input_position") is None and (it.get("position") or 0) >= 0 for it in content):
        return items
    taken = {it["nf_input_position"] for it in items if it.get("nf_input_position") is not None}
    slot = 0
    for it in sorted((it for it in items if it.get("nf_input_position") is None and (it.get("position") or 0) >= 0),
                     key=lambda it: it["position"]):
        while slot in taken:
            slot += 1
        it["nf_input_position"] = slot
        slot += 1
    return sorted(items, key=lambda it: (-1 if (it.get("position") or 0) < 0 and it.get("nf_input_position") is None
                                         else it["nf_input_position"], it.get("nf_row") or 0))
