# The two set-up commands of the README. Both install everything with uv into .venv.
#   make demo   install, build a small real dataset, curate it end to end (CPU, local cluster)
#   make test   install, run the test suite (with a headless browser: `make browser`)
PY ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PY) -m uv")
VENV := .venv
EXTRAS ?= clip,dev,slurm,s3,faiss,dali,explore

.PHONY: install demo test test-all lint bench clean browser

$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PY) -m pip install -q uv
	$(UV) venv -q --allow-existing -p 3.11 $(VENV) || $(UV) venv -q --allow-existing $(VENV)
	$(UV) pip install -q -p $(VENV)/bin/python -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/python scripts/make_demo_data.py --out demo_data
	$(VENV)/bin/nemo-frames curate configs/demo.yaml

# Debian's Chromium for the browser tests (report, explorer). Needs root and apt; where either is
# missing the tests still run and the browser tests skip, saying so.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: could not install chromium (needs root and apt-get): the browser tests will skip"

test: install browser
	$(VENV)/bin/python -m pytest -q

test-all: install browser
	$(VENV)/bin/python -m pytest -q -m "not gpu"

lint: install
	$(VENV)/bin/ruff check nemo_frames tests benchmarks scripts

# The wheels a lent GPU machine lacks (Python 3.12, manylinux x86-64), into .gpu-wheels/ (ignored), with a
# size check (<= 60 MiB) and a check that every requirement is on the machine or in the set. Then on such a
# machine: scripts/gpu_check.sh OUT_DIR (docs/performance.md, "GPU check").
.PHONY: gpu-wheels
gpu-wheels:
	$(PY) scripts/gpu_wheels.py --dest .gpu-wheels

clean:
	rm -rf demo_out demo_data .pytest_cache
