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

PROMETHEUS := /usr/bin/prometheus
CLUSTER := $(PYTHON) e2e/cluster.py

.PHONY: demo test lint crds cluster-up cluster-down bench images

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

# Debian's Prometheus + promtool for e2e/test_prometheus.py (no node-exporter: --no-install-recommends).
$(PROMETHEUS):
	command -v prometheus > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# The e2e tests bring the control plane up themselves (e2e/conftest.py -> e2e/cluster.py), building
# kube-apiserver, kube-controller-manager, etcd, kubectl, helm and KubeRay once per version.
test: $(INSTALLED) $(PROMETHEUS)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests e2e

# A local control plane (no kubelet: objects are real, pods never run). The script needs only the
# standard library; `make cluster-up` builds the binaries on first use (see e2e/README.md).
cluster-up:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crds: $(INSTALLED)
	$(RLHF) crds > crds/rlhfjobs.rlhf.io.yaml
	cp crds/rlhfjobs.rlhf.io.yaml helm/rlhf-operator/crds/rlhfjobs.rlhf.io.yaml
	$(RLHF) crds --kind RLHFPipeline > crds/rlhfpipelines.rlhf.io.yaml
	cp crds/rlhfpipelines.rlhf.io.yaml helm/rlhf-operator/crds/rlhfpipelines.rlhf.io.yaml

# CPU benchmarks side by side with their peers (TRL, KubeRay); results in bench/results/, table in bench/README.md.
bench: $(INSTALLED)
	$(PIP) install -q --no-build-isolation -e '.[trainer,dev,bench]'
	$(PY) bench/run.py --update-readme

# Needs a Docker engine; images/build.sh says so plainly where there is none.
images:
	images/build.sh all
