"""Parquet IO that round-trips every column type of the sample and item tables.

``dd.read_parquet`` on files written from ArrowDtype list columns fails with
``data type 'list<item: float>[pyarrow]' not understood`` (pandas #57411), so
reading goes through an Arrow ``types_mapper`` that maps list, binary and string
types to the pandas dtypes we use, and writing casts reserved columns to their
canonical Arrow types first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa

from nemo_frames import schema as S
from nemo_frames.backend import frame_backend

_CANONICAL = {**S.SAMPLE_ARROW_TYPES, **S.ITEM_ARROW_TYPES}


def types_mapper(t: pa.DataType) -> Any:
    """Arrow → pandas dtype for reading: ArrowDtype for lists, binaries and nested types,
    ``string[pyarrow]`` for strings, pandas' nullable ``Int64`` / ``UInt64`` for 64-bit integers,
    pyarrow's own default (None) for other flat numerics."""
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return pd.ArrowDtype(t)
    if pa.types.is_int64(t) or pa.types.is_uint64(t):
        # pyarrow's default turns a 64-bit integer column with nulls into float64, which rounds values
        # above 2**53 (a pHash is a full uint64) and cannot hold 2**64 - 1 at all.
        return pd.Int64Dtype() if pa.types.is_int64(t) else pd.UInt64Dtype()
    dtype = S.arrow_dtype(t)
    return dtype if isinstance(dtype, pd.api.extensions.ExtensionDtype) else None


def canonical_schema(df: pd.DataFrame, overrides: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The Arrow schema a partition is written with: reserved columns get their canonical types."""
    fields = []
    table = pa.Schema.from_pandas(df, preserve_index=False)
    types = {**_CANONICAL, **(overrides or {})}
    for f in table:
        t = types.get(f.name, f.type)
        if pa.types.is_large_string(t) and f.name not in types:
            t = pa.string()
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def _inferred_type(col: pd.Series, arr: pa.Array | pa.ChunkedArray) -> pa.DataType:
    # The type pa.Schema.from_pandas infers for one column (pyarrow's dataframe_to_types rules), without
    # building the whole schema and its pandas metadata: extension dtypes by their empty conversion,
    # categoricals and object columns by their values, numpy dtypes by the dtype.
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype):
        return arr.type
    if pd.api.types.is_extension_array_dtype(dtype):
        return pa.array(col.iloc[:0], from_pandas=True).type
    return pa.from_numpy_dtype(dtype)


def arrow_column(col: pd.Series, name: str, *, overrides: dict[str, pa.DataType] | None = None) -> pa.Array:
    """One pandas column as the Arrow array :func:`table_from_pandas` would store for it.

    Reserved columns get their canonical type; others keep the type pyarrow infers from pandas
    (``large_string`` becomes ``string``).
    """
    arr = pa.array(col, from_pandas=True) if not isinstance(col.dtype, pd.ArrowDtype) else pa.array(col)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    types = _CANONICAL if not overrides else {**_CANONICAL, **overrides}
    t = types.get(name)
    if t is None:
        t = arr.type if isinstance(col.dtype, pd.ArrowDtype) else _inferred_type(col, arr)
        if pa.types.is_large_string(t):
            t = pa.string()
    if arr.type != t:
        try:
            arr = arr.cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TypeError(
                f"write_parquet: column {name!r}: expected Arrow type {t}, found {arr.type} "
                f"that cannot be cast ({exc}); convert the column first"
            ) from None
    return arr


def table_from_pandas(df: pd.DataFrame, *, overrides: dict[str, pa.DataType] | None = None) -> pa.Table:
    """A pandas partition as an Arrow table with canonical types and no pandas metadata.

    Dropping the pandas metadata keeps other readers (and pandas itself) from tripping
    on ArrowDtype names stored as strings.
    """
    names = [str(c) for c in df.columns]
    cols = [arrow_column(df[c], n, overrides=overrides) for c, n in zip(df.columns, names, strict=True)]
    return pa.Table.from_arrays(cols, schema=pa.schema([pa.field(n, a.type) for n, a in zip(names, cols, strict=True)]))


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as pandas with our dtypes."""
    return table.to_pandas(types_mapper=types_mapper, ignore_metadata=True)


def write_parquet(
    df: dd.DataFrame | pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    name_function: Any = None,
    compression: str = "zstd",
    compute: bool = True,
    **kwargs: Any,
) -> Any:
    """Write a sample or item table as Parquet (one file per partition), list columns included.

    With ``compute=False`` nothing is written yet: the lazy write is returned, to be computed
    together with other results of the same table (``dask.compute(write, df[cols])`` reads the
    input once).

    Examples
    --------
    >>> import tempfile, numpy as np, pandas as pd
    >>> from nemo_frames.backend import from_matrix
    >>> pdf = pd.DataFrame({"key": ["a", "b"]}).assign(embedding=from_matrix(np.eye(2, dtype="f4")))
    >>> d = tempfile.mkdtemp()
    >>> write_parquet(pdf, d, overwrite=True)
    >>> list(read_parquet(d).compute().embedding.iloc[1])
    [0.0, 1.0]
    """
    if isinstance(df, pd.DataFrame):
        df = dd.from_pandas(df, npartitions=1, sort=False)
    if frame_backend(df) == "cudf":
        return df.to_parquet(
            path, write_index=False, storage_options=storage_options, overwrite=overwrite, compute=compute, **kwargs
        )
    schema = canonical_schema(df._meta)
    df = df.map_partitions(lambda p: p.reset_index(drop=True), meta=df._meta.reset_index(drop=True))
    return df.to_parquet(
        os.fspath(path) if isinstance(path, os.PathLike) else path,
        write_index=False,
        schema=schema,
        storage_options=storage_options,
        overwrite=overwrite,
        name_function=name_function,
        compression=compression,
        write_metadata_file=False,
        custom_metadata=None,
        compute=compute,
        **kwargs,
    )


def _parquet_files(path: str | Sequence[str], storage_options: dict[str, Any] | None) -> tuple[Any, list[str]]:
    import fsspec

    fs, _, paths = fsspec.get_fs_token_paths(path, storage_options=storage_options)
    files: list[str] = []
    for p in paths:
        if fs.isdir(p):
            files += sorted(
                f for f in fs.find(p)
                if f.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in f[len(p):].split("/") if part)
            )
        else:
            files.append(p)
    return fs, files


def check_parquet_files(
    path: str | os.PathLike[str] | Sequence[str], *, storage_options: dict[str, Any] | None = None
) -> int:
    """Read every file's footer and check that all schemas match the first; return the number of files.

    Dask reads footers lazily, so without this a corrupt file fails mid-job with pyarrow's
    "Parquet magic bytes not found" (no file name), and a file with another schema is silently
    concatenated (mixed column types, or missing columns filled with nulls).

    Raises
    ------
    ValueError
        Naming the file, and for a schema mismatch the column, the expected and the found type.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    fs, files = _parquet_files(path, storage_options)

    def schema_of(f: str) -> pa.Schema:
        try:
            with fs.open(f, "rb") as fh:
                return pq.read_schema(fh)
        except Exception as exc:
            raise ValueError(
                f"read_parquet: {f} is not a readable Parquet file ({type(exc).__name__}: {exc}); "
                "it is corrupt or truncated — remove it or write it again"
            ) from exc

    with ThreadPoolExecutor(8) as pool:
        schemas = list(pool.map(schema_of, files))
    if not schemas:
        return 0
    first = schemas[0].remove_metadata()
    for f, sch in zip(files[1:], schemas[1:], strict=True):
        sch = sch.remove_metadata()
        if sch.equals(first):
            continue
        a, b = dict(zip(first.names, first.types, strict=True)), dict(zip(sch.names, sch.types, strict=True))
        diffs = [f"column {c!r}: expected {a[c]}, found {b.get(c, 'no such column')}" for c in a if a[c] != b.get(c)]
        diffs += [f"column {c!r}: not in {files[0]}" for c in b if c not in a]
        raise ValueError(
            f"read_parquet: {f} has another schema than {files[0]}: {'; '.join(diffs[:5])}; "
            "write all files of a table with the same schema (or read them separately)"
        )
    return len(files)


def _data_files(path: Any, storage_options: dict[str, Any] | None) -> Any:
    """A directory becomes its data files (``_``/``.``-prefixed ones left out, see :func:`_parquet_files`).

    Export writes run-level files (``_errors.parquet``) beside the shards, and temporaries
    start with a dot; Spark and pyarrow datasets skip both by the same rule.
    """
    if not isinstance(path, str):
        return path
    fs, files = _parquet_files(path, storage_options)
    if not fs.isdir(fs._strip_protocol(path)):
        return path
    if not files:
        raise FileNotFoundError(f"read_parquet: no *.parquet data files under {path!r}")
    return [fs.unstrip_protocol(f) if "://" in path else f for f in files]


def read_parquet(
    path: str | os.PathLike[str] | Sequence[str],
    *,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    embedding_dim: int | None = None,
    check_files: bool = True,
    **kwargs: Any,
) -> dd.DataFrame:
    """Read Parquet written by :func:`write_parquet` (or by other tools) into a Dask dataframe.

    On the cuDF backend (``dask.config.set({"dataframe.backend": "cudf"})``) list columns
    come back as cuDF lists; on pandas as ``ArrowDtype(list<float32>)``.

    Parameters
    ----------
    embedding_dim : int, optional
        Check that ``embedding`` rows have this dimension (on the first partition's first row),
        and raise naming the column, the expected and the found dimension.
    check_files : bool
        Read every file's footer first (see :func:`check_parquet_files`): a corrupt file or one with
        another schema raises a ``ValueError`` naming it, before any work is scheduled.
    """
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    if check_files:
        check_parquet_files(path, storage_options=storage_options)
    path = _data_files(path, storage_options)
    if dask.config.get("dataframe.backend", "pandas") == "cudf":
        ddf = dd.read_parquet(path, columns=columns, storage_options=storage_options, **kwargs)
    else:
        ddf = dd.read_parquet(
            path,
            columns=list(columns) if columns else None,
            storage_options=storage_options,
            arrow_to_pandas={"types_mapper": types_mapper, "ignore_metadata": True},
            index=False,
            **kwargs,
        )
    if embedding_dim is not None and S.EMBEDDING in ddf.columns:
        first = ddf[S.EMBEDDING].head(1, npartitions=-1)
        if len(first) and first.iloc[0] is not None and len(first.iloc[0]) != embedding_dim:
            raise ValueError(
                f"read_parquet: column 'embedding': expected dimension {embedding_dim}, found {len(first.iloc[0])}; "
                "the embeddings come from another CLIP model — pass embedding_dim= matching it, or re-embed"
            )
    return ddf
