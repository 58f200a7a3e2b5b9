#!/usr/bin/env bash
# The one-call GPU check (docs/performance.md, "GPU check"). On a lent GPU machine, from the repo root:
#
#   scripts/gpu_check.sh "$OUT"              # carry .gpu-wheels (made here by `make gpu-wheels`)
#   scripts/gpu_check.sh OUT_DIR --dry-run   # CPU, tiny sizes, this machine's environment (the test suite)
#
# 1. installs the carried wheels into a target dir (no registry there; --no-deps: the set is exactly what
#    the machine lacks, checked by scripts/gpu_wheels.py);
# 2. runs `pytest -m gpu` (tests needing RAPIDS or DALI's CUDA wheel skip and say why);
# 3. scripts/gpu_check.py: fused score pass vs a bare loop (ViT-B/32, ViT-L/14; bf16, fp16; CPU decode vs
#    nvJPEG) on a one-GPU Dask cluster, and similarity blocks CUDA vs CPU on 200k x 768;
# and writes OUT_DIR/gpu_check.md (the table), gpu_check.json, pytest_gpu.log, gpu_check.log.
# Whole run: about 8 minutes at most on the GPU (GPU_CHECK_BUDGET_S bounds the measurements).
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT_DIR=$1; shift
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if [ "$DRY" = 1 ]; then
  PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-120}
  BUDGET=${GPU_CHECK_BUDGET_S:-120}
else
  PY=${PY:-python3}
  SITE=${GPU_CHECK_SITE:-/tmp/nf-site}
  shopt -s nullglob
  wheels=(.gpu-wheels/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_check: no wheels in .gpu-wheels/: run 'make gpu-wheels' on the dev machine and carry .gpu-wheels" >&2
    exit 2
  fi
  echo "gpu_check: installing ${#wheels[@]} wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || { echo "gpu_check: wheel install failed" >&2; exit 3; }
  export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
  PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-120}
  BUDGET=${GPU_CHECK_BUDGET_S:-300}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu_check: /'
fi

# The gpu-marked tests only: their files, so that collection does not import the whole suite.
mapfile -t GPU_TESTS < <(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py' | sort)
echo "gpu_check: pytest -m gpu over ${#GPU_TESTS[@]} files"
timeout "$PYTEST_TIMEOUT" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider -W ignore::DeprecationWarning \
  "${GPU_TESTS[@]}" 2>&1 | tee "$OUT_DIR/pytest_gpu.log"
PYTEST_RC=${PIPESTATUS[0]}
echo "gpu_check: pytest exit status $PYTEST_RC"

ARGS=("$OUT_DIR" --pytest-log "$OUT_DIR/pytest_gpu.log" --budget-s "$BUDGET")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
timeout $((BUDGET + 120)) "$PY" -W ignore::DeprecationWarning scripts/gpu_check.py "${ARGS[@]}" 2>&1 \
  | tee "$OUT_DIR/gpu_check.log"
CHECK_RC=${PIPESTATUS[0]}
echo "gpu_check: measurements exit status $CHECK_RC; table in $OUT_DIR/gpu_check.md"
# pytest: 0 all passed, 5 nothing collected/selected; anything else is a failure worth seeing.
if [ "$CHECK_RC" != 0 ]; then exit "$CHECK_RC"; fi
if [ "$PYTEST_RC" != 0 ] && [ "$PYTEST_RC" != 5 ]; then exit 4; fi
exit 0
