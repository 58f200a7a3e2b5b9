"""The demo dataset (scripts/make_demo_data.py) and one finished demo run, shared by the pipeline tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_RUNS: dict[str, Any] = {}


def demo_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def demo_shards(base: Path) -> tuple[Path, list[dict]]:
    """Write the demo shards under ``base/data``; return (dir, samples with their variants)."""
    mod = demo_module()
    items = mod.samples()
    mod.write_shards(base / "data", items, 3)
    return base / "data", items


def demo_config(data: Path, out: Path, **over: Any) -> dict[str, Any]:
    """The demo config (like configs/demo.yaml), CPU-cheap: one thread worker, no CLIP unless asked."""
    cfg: dict[str, Any] = {
        "input": {"urls": str(data / "{00000..00002}.tar")},
        "output": str(out),
        "cluster": {"kind": "threads", "options": {"n_workers": 1, "threads_per_worker": 2}},
        "score": {"clip": None, "qr": True},
        "filters": [{"blur": 100}, {"qr": 0.05}, {"min_size": 64}],
        "dedup": {"exact": True, "perceptual": {"threshold": 12}},
        "export": {"samples_per_shard": 8, "index": True},
        "report": {"enabled": True, "per_grid": 12},
    }
    for k, v in over.items():
        node = cfg
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return cfg


def demo_run(tmp_path_factory: Any) -> tuple[Any, list[dict], Path]:
    """Run the demo pipeline once per session; return (RunResult, samples, data dir)."""
    if "run" not in _RUNS:
        from nemo_frames.pipeline import curate

        base = tmp_path_factory.mktemp("demo")
        data, items = demo_shards(base)
        result = curate(demo_config(data, base / "out"), progress=False)
        _RUNS["run"] = (result, items, data)
    return _RUNS["run"]
