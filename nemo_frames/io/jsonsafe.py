"""Strict JSON for sidecars read from data: RFC 8259 only, errors as ``ValueError``.

Python's :func:`json.loads` accepts ``NaN`` / ``Infinity`` (not JSON; other readers reject the
sidecar we would pass on), turns ``1e999`` into ``inf`` silently, and raises ``RecursionError``
(not a ``ValueError``) on deeply nested input, which would escape a reader's error handling.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (RFC 8259 has no NaN / Infinity)")


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]!r} is out of the float64 range")
    return v


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON from data, raising ``ValueError`` for anything that is not plain, finite JSON.

    Bad UTF-8 raises ``UnicodeDecodeError`` (a ``ValueError``); nesting deeper than Python's
    recursion limit, ``NaN`` / ``Infinity``, floats that overflow float64, integers over
    Python's 4300-digit limit and lone surrogates (``"\\ud800"``, valid JSON syntax but not
    text any UTF-8 writer accepts) raise ``ValueError``.

    Examples
    --------
    >>> loads_strict(b'{"a": [1, 2.5]}')
    {'a': [1, 2.5]}
    >>> loads_strict('{"a": NaN}')
    Traceback (most recent call last):
    ...
    ValueError: NaN is not valid JSON (RFC 8259 has no NaN / Infinity)
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        doc = json.loads(text, parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise ValueError("JSON nested deeper than Python's recursion limit") from None
    if _SURROGATE_ESCAPE.search(text):
        # "\ud800" is valid JSON syntax but a lone surrogate is no Unicode text: Arrow, Parquet and
        # UTF-8 writers refuse it. Only texts with such an escape need the (slower) full check.
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
            raise ValueError(f"JSON string holds a lone surrogate {bad} (not a Unicode character)") from None
    return doc
