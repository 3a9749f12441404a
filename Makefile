# The two README commands: `make demo` and `make test`. Both set up .venv when it is
# missing or older than pyproject.toml. torch is pinned to the CPU wheel first so that
# no multi-GB CUDA build is pulled in.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medanalysis-installed
TORCH := torch==2.13.0

.PHONY: demo test test-slow setup bench clean

$(STAMP): pyproject.toml Makefile
	@echo "Setting up $(VENV) (torch CPU, MedAnalysis with headless+dev extras)..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[headless,dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medanalysis demo -o demo-output

test: $(STAMP)
	@command -v dciodvfy >/dev/null || (apt-get install -y -qq dicom3tools >/dev/null 2>&1) || \
	  echo "dicom3tools (dciodvfy) not installed: the DICOM SEG/SR validation checks will be skipped"
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	@command -v elastix >/dev/null && command -v dcm2niix >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq elastix dcm2niix)
	@for b in Testing/Benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
