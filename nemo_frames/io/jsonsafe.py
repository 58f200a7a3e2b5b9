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

import orjson

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# orjson reads an integer past the 64-bit range as a float (losing digits); the standard
# library keeps it exact. Only texts with a run of 19+ digits that does not follow a "." or an
# exponent take the slow path. Found with translate + a substring search (~1 µs a sidecar; a
# regular expression takes ~8 µs on sidecars full of floats): digits → "1", "." / "e" / "E" → "2",
# everything else → "0".
_DIGIT_CLASS = bytes(
    ord("1") if chr(b).isdigit() and b < 128 else ord("2") if chr(b) in ".eE" else ord("0") for b in range(256)
)
_LONG_INT = b"0" + b"1" * 19


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (RFC 8259 has no NaN / Infinity)")


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]!r} is out of the float64 range")
    return v


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON from data, raising ``ValueError`` for anything that is not plain, finite JSON.

    Bad UTF-8, a byte order mark, nesting deeper than 1,024 levels (orjson's limit; Python's
    recursion limit on the slow path for texts with 19+ digit integers), ``NaN`` /
    ``Infinity``, floats that overflow float64, integers over Python's 4300-digit limit and lone surrogates (``"\\ud800"``, valid JSON syntax but not
    text any UTF-8 writer accepts) raise ``ValueError``.

    Examples
    --------
    >>> loads_strict(b'{"a": [1, 2.5]}')
    {'a': [1, 2.5]}
    >>> for bad in ('{"a": NaN}', '{"a": 1e999}', '{"a": "\\ud800"}', b'{"a": "caf\\xe9"}'):
    ...     try:
    ...         loads_strict(bad)
    ...     except ValueError:
    ...         print("rejected")
    rejected
    rejected
    rejected
    rejected
    >>> loads_strict(b'{"id": 123456789012345678901234567890}')  # exact, never a float
    {'id': 123456789012345678901234567890}
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _LONG_INT not in (b" " + raw).translate(_DIGIT_CLASS):
        # orjson is RFC 8259 strict already (no NaN / Infinity, overflow, lone surrogates or bad
        # UTF-8; a depth limit of 1024) and ~20x faster on sidecars full of numbers.
        if raw.startswith(b"\xef\xbb\xbf"):
            raise ValueError("Unexpected UTF-8 BOM: a JSON text must not start with a byte order mark")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # rare: the standard library's parse below says what is wrong in its own words
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
    if isinstance(data, str) and not data.isascii():
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
            raise ValueError(f"JSON text holds a lone surrogate {bad} (not a Unicode character)") from None
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


def dumps_sorted(doc: Any) -> str:
    """Compact JSON text with sorted keys (UTF-8, not ASCII-escaped): the ``json`` column's form.

    Examples
    --------
    >>> dumps_sorted({"b": [1, 2.5], "a": "é"})
    '{"a":"é","b":[1,2.5]}'
    >>> dumps_sorted({"big": 2**70})
    '{"big":1180591620717411303424}'
    """
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:
        # Integers past 64 bits (kept exact by loads_strict) are not orjson's; the standard
        # library writes them, in the same compact form.
        return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
