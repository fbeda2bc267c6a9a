# erofs-converter: `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export PATH := $(CURDIR)/$(BIN):$(PATH)
, := ,

.PHONY: help setup test lint demo bench mirror mirror-demo image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/setup-system.sh
	bash scripts/setup-system.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The per-entry modules compiled with mypyc (converter/native.py), and converter/erofs/zloop.c:
# rebuilt whenever a source changes; until then (or with EROFS_CONVERTER_NATIVE=0) Python runs the sources.
NATIVE := converter/_native.json
$(NATIVE): $(STAMP) scripts/build_native.py $(shell find converter -name '*.py' -o -name '*.c')
	$(BIN)/python scripts/build_native.py

setup: $(STAMP) $(NATIVE) ## install Debian packages, erofs-utils >= 1.9.3 (cached build), the venv, the compiled modules

test: $(STAMP) $(NATIVE) ## run the whole test suite (sets up first if needed)
	$(BIN)/ruff check converter tests
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check converter tests
	$(BIN)/mypy

demo: $(STAMP) $(NATIVE) ## the main job: convert an embedded sample image through a local registry
	$(BIN)/python -m converter.testing.demo

bench: $(STAMP) $(NATIVE) ## benchmark against gzip|mkfs.erofs (not part of make test)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

mirror: $(STAMP) $(NATIVE) ## run a mirroring job: make mirror JOB=pipelines/x.yaml
	$(BIN)/convert mirror $(JOB)

mirror-demo: $(STAMP) $(NATIVE) ## mirror the embedded sample image into a local registry
	$(BIN)/python -m converter.testing.demo --mirror --job pipelines/local-sample.yaml

# The tool's container image (docker/Dockerfile, docs/container.md). pip in the build gets this
# machine's CA bundle (PIP_CA; default: pip's `cert` setting) and a pip.conf (PIP_CONF) as build
# secrets, which stay out of the image. Extra `docker build` arguments: DOCKER_BUILD_ARGS; the
# client: DOCKER (BuildKit is needed: Docker >= 23, or 20.10 with DOCKER_BUILDKIT=1 as here).
IMAGE ?= erofs-converter
BASE_IMAGE ?= python:3.11-slim-bookworm
DOCKER ?= docker
PIP_CA ?= $(or $(PIP_CERT),$(shell $(firstword $(wildcard $(BIN)/python) $(PY)) -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$$/\1/p" | tail -n1))
PIP_CONF ?=
image: ## build the container image: make image [IMAGE=name:tag BASE_IMAGE=… PIP_CA=pem PIP_CONF=file]
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  $(if $(PIP_CA),--secret id=pip_ca$(,)src=$(PIP_CA)) $(if $(PIP_CONF),--secret id=pip_conf$(,)src=$(PIP_CONF)) \
	  $(DOCKER_BUILD_ARGS) -t $(IMAGE) .

clean: ## remove the venv, caches and compiled modules
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache $(NATIVE)
	find converter -name '*.so' -delete
