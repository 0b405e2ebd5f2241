# Two commands on a fresh machine: `make demo` and `make test` (`make lint` checks the style).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV    := pytest pytest-xdist hypothesis ruff==0.17.6
# the optional extras, at the versions they were tested with: `make test` installs them so CI
# tests them; `make demo` needs only the core
EXTRAS := ultralytics==8.4.190 sahi==0.12.8
XSTAMP := $(VENV)/.installed-extras
WORKERS ?= 2
# pip installs without byte-compiling (torch alone has ~20k modules, most never imported) and
# Python writes the bytecode of what is imported on first use, even where the environment sets
# PYTHONDONTWRITEBYTECODE: every test and tool starts a fresh interpreter that imports torch
export PYTHONDONTWRITEBYTECODE :=
PIP    := $(PY) -m pip install -q --no-compile

.PHONY: install test lint format demo gpu-check clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt $(DEV)
	$(PIP) --no-deps -e .
	touch $(STAMP)

$(XSTAMP): $(STAMP)
	$(PIP) $(EXTRAS)
	touch $(XSTAMP)

install: $(STAMP)

test: $(XSTAMP)
	$(PY) -m pytest -n $(WORKERS) --dist worksteal tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory install && \
	$(PY) tools/demo.py --install-seconds $$(( $$(date +%s) - $$start ))

# on a CUDA machine: train-step time, memory and host syncs per precision, fp32 vs autocast
# evaluation, determinism (docs/gpu.md); exits non-zero without a GPU
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py --out gpu_check.md --json gpu_check.json

clean:
	rm -rf $(VENV) output
