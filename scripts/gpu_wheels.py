"""Download the wheels a lent GPU machine lacks, and check that they are all it lacks and that they fit.

The lent machines (see docs/performance.md, "GPU check") have Python 3.12 with PyTorch, torchvision,
CuPy, pandas, pyarrow, OpenCV and scikit-learn, but no package registry. nemo_frames' other
dependencies travel with the working tree as wheels (at most 64 MiB per call, this set under 60 MiB).

    python3 scripts/gpu_wheels.py --dest .gpu-wheels          # what `make gpu-wheels` runs
    python3 scripts/gpu_wheels.py --check-only                # the list checks, no download

Checks, each fatal:
- no wheel in scripts/gpu_wheels.txt is a package the machine already has (it would replace the
  machine's build, e.g. a CPU torch over the CUDA one);
- nemo_frames' runtime requirements (core + the ``clip`` extra) are each on the machine or in the list;
- after download: every ``Requires-Dist`` of every wheel (markers evaluated for Python 3.12 on Linux)
  is on the machine or in the set, one version per package, and the set is at most ``--max-mib``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS_TXT = ROOT / "scripts" / "gpu_wheels.txt"
MACHINE_TXT = ROOT / "scripts" / "gpu_machine_packages.txt"
# What the lent machine's pip accepts: CPython 3.12, glibc manylinux on x86-64.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64")
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
# Requirements of nemo_frames that the GPU check never imports, and why.
NOT_NEEDED = {
    "pillow-avif-plugin": "only for Python < 3.12",
    "rapids-dask-dependency": "a metapackage pinning dask/distributed (carried at its pins) and bokeh (dashboard)",
}


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]


def wheel_specs() -> dict[str, str]:
    """``{normalised name: 'name==version'}`` from gpu_wheels.txt."""
    out = {}
    for spec in read_list(WHEELS_TXT):
        name = re.split(r"[=<>!~ ;\[]", spec, maxsplit=1)[0]
        if "==" not in spec:
            raise SystemExit(f"gpu_wheels.txt: {spec!r} must pin one version (name==version), so the set is reproducible")
        out[norm(name)] = spec
    return out


def norm_set(names: list[str]) -> set[str]:
    return {norm(n) for n in names}


def machine_packages() -> set[str]:
    return norm_set(read_list(MACHINE_TXT))


def project_requirements() -> list[str]:
    """Core dependencies and the ``clip`` extra of pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(proj["dependencies"]) + list(proj["optional-dependencies"]["clip"])


def _requirement(text: str) -> tuple[str, bool]:
    """(normalised name, applies on the target) of one requirement string."""
    from packaging.requirements import Requirement

    req = Requirement(text)
    applies = req.marker is None or req.marker.evaluate(TARGET_ENV)
    return norm(req.name), applies


def check_lists() -> list[str]:
    """Problems with the lists themselves (no download needed)."""
    errors = []
    wheels, machine = wheel_specs(), machine_packages()
    for name in sorted(set(wheels) & machine):
        errors.append(f"{name}: already on the machine; carrying it would replace the machine's build. Drop it from {WHEELS_TXT.name}")
    for text in project_requirements():
        name, applies = _requirement(text)
        if applies and name not in machine and name not in wheels and name not in NOT_NEEDED:
            errors.append(f"nemo_frames requires {text!r}, which is neither on the machine nor in {WHEELS_TXT.name}")
    return errors


def download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()  # a stale version beside the new one would stop the install on the machine
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", "-d", str(dest), "-q"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    cmd += list(wheel_specs().values())
    print("+", " ".join(cmd[:4]), "... (", len(wheel_specs()), "wheels )", flush=True)
    subprocess.run(cmd, check=True)


def check_wheels(dest: Path, max_mib: float) -> list[str]:
    """Problems with the downloaded set: missing requirements, duplicates, size."""
    errors = []
    wheels, machine = wheel_specs(), machine_packages()
    files = sorted(dest.glob("*.whl"))
    have: dict[str, list[str]] = {}
    for f in files:
        have.setdefault(norm(f.name.split("-", 1)[0]), []).append(f.name)
    for name, names in have.items():
        if len(names) > 1:
            errors.append(f"{name}: {len(names)} wheels ({', '.join(names)}); keep one version")
        if name not in wheels:
            errors.append(f"{name}: not in {WHEELS_TXT.name} ({names[0]})")
    for name in wheels:
        if name not in have:
            errors.append(f"{name}: listed but not downloaded")
    for f in files:
        with zipfile.ZipFile(f) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode("utf-8", "replace").splitlines()
        for ln in lines:
            if not ln.startswith("Requires-Dist:"):
                continue
            name, applies = _requirement(ln.split(":", 1)[1].strip())
            if applies and name not in machine and name not in have and name not in NOT_NEEDED:
                errors.append(f"{f.name} requires {name}, which is neither on the machine nor in the set")
    total = sum(f.stat().st_size for f in files)
    mib = total / 2**20
    print(f"{len(files)} wheels, {mib:.1f} MiB in {dest} (limit {max_mib:g} MiB)")
    if mib > max_mib:
        errors.append(f"the wheel set is {mib:.1f} MiB, over the {max_mib:g} MiB limit: one device call carries "
                      "64 MiB with the working tree. Drop a wheel or split the check")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels")
    ap.add_argument("--max-mib", type=float, default=60.0)
    ap.add_argument("--check-only", action="store_true", help="check the lists (and wheels already in --dest)")
    a = ap.parse_args()
    errors = check_lists()
    if not errors and not a.check_only:
        download(a.dest)
    if not errors and a.dest.is_dir() and any(a.dest.glob("*.whl")):
        errors += check_wheels(a.dest, a.max_mib)
    for e in errors:
        print(f"gpu-wheels: ERROR: {e}", file=sys.stderr)
    if errors:
        return 1
    print("gpu-wheels: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
