"""Fuzz the tar reader and the WebDataset scan with atheris (coverage-guided).

Usage::

    python scripts/fuzz_tar.py -max_total_time=60 [-rss_limit_mb=1024] [corpus_dir]

Allowed outcomes for any input: ``iter_members`` yields members or raises one of ``NotATar``,
``TarTruncated``, ``TarCorrupt``; ``scan_shard`` returns rows, each errored row with an error code.
Anything else (another exception, a crash, a timeout, RSS over the limit) is a finding: atheris stops
and writes the input as ``crash-*``. atheris is in the ``dev`` extra (``pip install atheris``).
"""

from __future__ import annotations

import io
import sys


def main() -> None:
    import atheris

    # Heavy dependencies first, uninstrumented; then only our modules get coverage instrumentation.
    import dask.dataframe  # noqa: F401
    import fsspec
    import pandas  # noqa: F401

    with atheris.instrument_imports(include=["nemo_frames"]):
        from nemo_frames.io.tar import NotATar, TarCorrupt, TarTruncated, iter_members
        from nemo_frames.io.webdataset import ScanConfig, scan_shard
        from nemo_frames.schema import error_code

    cfg = ScanConfig(max_member_size=1 << 20, max_sidecar_size=64 << 10)
    fs = fsspec.filesystem("memory")

    def one(data: bytes) -> None:
        try:
            for _ in iter_members(io.BytesIO(data), want=lambda n, s: True, max_read_size=1 << 20):
                pass
        except (NotATar, TarTruncated, TarCorrupt):
            pass
        fs.pipe_file("/fuzz/shard.tar", data)
        for r in scan_shard("memory://fuzz/shard.tar", cfg, {}, None):
            if r["nf_status"] == "error" and not error_code(r["nf_error"]):
                raise AssertionError(f"errored row without a code: {r}")

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
