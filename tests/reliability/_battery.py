"""Shared scaffolding of the reliability battery (issue 7, DESIGN §6–7).

* ``record(item, ...)``: append one figures row to ``$NF_RELIABILITY_FIGURES`` (JSON lines), which
  ``scripts/reliability_battery.py`` turns into the summary table. Without the variable it does nothing,
  so the tests run the same under plain pytest.
* ``TarBuilder``: a GNU tar in memory that remembers where each member's header starts, so a test can
  corrupt exactly the bytes of one sample.
* ``run_isolated``: run Python code in a subprocess with a timeout and report its peak RSS
  (``VmHWM``; ``ru_maxrss`` would include the parent's high-water mark) — hangs and memory blow-ups become figures, not a stuck
  test run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES_ENV = "NF_RELIABILITY_FIGURES"


def record(item: str, **figures: Any) -> None:
    """Append a figures row for the battery table (no-op unless ``$NF_RELIABILITY_FIGURES`` is set)."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"item": item, **figures}, default=str) + "\n")


# --------------------------------------------------------------------------- tar building
@dataclasses.dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


class TarBuilder:
    """GNU tar bytes built member by member, with the header offset of each member."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.GNU_FORMAT)
        self.offsets: dict[str, int] = {}

    def add(self, members: Iterable[Member | tuple[str, bytes]]) -> int:
        """Add members; return the byte offset where the first one's header starts."""
        start = self.tar.offset
        for m in members:
            if isinstance(m, tuple):
                m = Member(*m)
            ti = tarfile.TarInfo(m.name)
            ti.type = m.type
            ti.linkname = m.linkname
            ti.mtime = 1_700_000_000
            ti.size = len(m.data) if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            self.offsets[m.name] = self.tar.offset
            self.tar.addfile(ti, io.BytesIO(m.data) if ti.size else None)
        return start

    def mark(self) -> int:
        return self.tar.offset

    def close(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def header_checksum(block: bytes) -> bytes:
    """Recompute a tar header's checksum field (so a crafted header passes the checksum)."""
    b = bytearray(block[:512])
    b[148:156] = b" " * 8
    chk = sum(b)
    b[148:156] = f"{chk:06o}\0 ".encode()
    return bytes(b)


# --------------------------------------------------------------------------- subprocess isolation
@dataclasses.dataclass
class Isolated:
    rc: int | None  # None: killed by the timeout (a hang)
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mib: float | None

    @property
    def hung(self) -> bool:
        return self.rc is None


# ru_maxrss survives exec on Linux (a child of a big parent starts with the parent's high-water mark), so
# report VmHWM of the child's own address space, with getrusage as the fallback elsewhere.
_RSS_TAIL = textwrap.dedent(
    """
    import resource as _r, sys as _s
    try:
        _hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    except Exception:
        _hwm = _r.getrusage(_r.RUSAGE_SELF).ru_maxrss
    _s.stderr.write("\\n@@peak_rss_kib=%d\\n" % _hwm)
    """
)


def run_isolated(code: str, *, timeout: float = 60.0, args: list[str] | None = None) -> Isolated:
    """Run ``code`` in a fresh interpreter (project on the path); kill it after ``timeout`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code) + "\n" + _RSS_TAIL, *(args or [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        rc = None
    dt = time.perf_counter() - t0
    err_s = err.decode("utf-8", "replace")
    peak = None
    for line in err_s.splitlines():
        if line.startswith("@@peak_rss_kib="):
            peak = int(line.split("=", 1)[1]) / 1024
    return Isolated(rc, out.decode("utf-8", "replace"), err_s, dt, peak)
