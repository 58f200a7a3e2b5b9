"""Strict JSON for sidecars read from data: RFC 8259 only, errors as ``ValueError``.

Python's :func:`json.loads` accepts ``NaN`` / ``Infinity`` (not JSON; other readers reject the
sidecar we would pass on), turns ``1e999`` into ``inf`` silently, and raises ``RecursionError``
(not a ``ValueError``) on deeply nested input, which would escape a reader's error handling.
"""

from __future__ import annotations

import json
import math
from typing import Any


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
    recursion limit, ``NaN`` / ``Infinity``, floats that overflow float64 and integers over
    Python's 4300-digit limit raise ``ValueError``.

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
        return json.loads(text, parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise ValueError("JSON nested deeper than Python's recursion limit") from None
