# The two set-up commands of the README. Both install everything with uv into .venv.
#   make demo   install, build a small real dataset, curate it end to end (CPU, local cluster)
#   make test   install, run the test suite
PY ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PY) -m uv")
VENV := .venv
EXTRAS ?= clip,dev,slurm,s3,faiss,dali

.PHONY: install demo test test-all lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PY) -m pip install -q uv
	$(UV) venv -q --allow-existing -p 3.11 $(VENV) || $(UV) venv -q --allow-existing $(VENV)
	$(UV) pip install -q -p $(VENV)/bin/python -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/python scripts/make_demo_data.py --out demo_data
	$(VENV)/bin/nemo-frames curate configs/demo.yaml

test: install
	$(VENV)/bin/python -m pytest -q

test-all: install
	$(VENV)/bin/python -m pytest -q -m "not gpu"

lint: install
	$(VENV)/bin/ruff check nemo_frames tests benchmarks scripts

clean:
	rm -rf demo_out demo_data .pytest_cache
