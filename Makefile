# Two commands for a fresh machine: `make demo` and `make test`. Both install what they need into
# .venv first; the install is skipped while pyproject.toml is unchanged.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RLHF := $(VENV)/bin/rlhf
INSTALLED := $(VENV)/.installed
export DS_ACCELERATOR := cpu
export DS_BUILD_OPS := 0
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint crds check-crds cluster-up cluster-down bench images

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# DeepSpeed ships only an sdist whose setup imports torch: torch first, then no build isolation.
	$(PIP) install -q 'torch>=2.4'
	$(PIP) install -q --no-build-isolation -e '.[trainer,dev]'
	touch $@

demo: $(INSTALLED)
	$(PY) -m rlhf_trainer.demo
	$(RLHF) run examples/tiny-grpo-cpu.yaml --output runs/tiny-grpo-cpu

test: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests e2e

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crds: $(INSTALLED)
	$(RLHF) crds > crds/rlhfjobs.rlhf.io.yaml
