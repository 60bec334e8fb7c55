# Two set-up commands, both for a fresh Debian 12 machine as root:
#   make demo   installs what it needs and runs the whole path on the sim backend
#   make test   installs what it needs (Debian packages for the integration tests too) and runs the suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-deps lint unit bench kernels clean python native

python:
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv (apt-get)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv python3-pip; }

$(BIN)/python: | python
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	@command -v gcc >/dev/null && [ -e /usr/include/stdio.h ] || { \
	  echo "installing gcc (apt-get): the native client is built from source"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev make; }
	$(BIN)/pip install -q -e '.[cuda]' nvidia-cuda-runtime
	touch $@

$(VENV)/.full: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[host,test,bench,cuda]'
	touch $@

# the demo's programs are cuda-python examples over the native client: cuda-bindings, and gcc with
# NVIDIA's headers (the nvidia-cuda-runtime wheel) to build libcuda.so.1
demo: $(VENV)/.demo
	$(MAKE) native
	$(BIN)/python -m orion_virt.demo

test-deps:
	sh scripts/install-test-deps.sh

# ruff and mypy come with the test extra; make test runs them before pytest
lint: $(VENV)/.full
	$(BIN)/ruff check orion_virt tests tools
	$(BIN)/mypy orion_virt

test: test-deps
	$(MAKE) $(VENV)/.full
	$(MAKE) lint
	$(MAKE) native
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(VENV)/.full
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(VENV)/.full
	$(BIN)/orion-bench --out out/bench

# Regenerate the checked-in kernels from their source (needs nvcc).
kernels:
	nvcc --ptx -arch=compute_80 -o orion_virt/kernels/test_kernels.ptx orion_virt/kernels/test_kernels.cu
	nvcc --cubin -arch=sm_90 -o orion_virt/kernels/test_kernels.sm_90.cubin orion_virt/kernels/test_kernels.cu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache out

# The native client: build/native/libcuda.so.1 (orion_virt/client/native/README.md). cuda.h comes
# from nvidia-cuda-runtime in the venv (installed here if missing) or from CUDA_INCLUDE=DIR.
native: | $(BIN)/python
	@[ -n "$(CUDA_INCLUDE)" ] || ls $(VENV)/lib/python3*/site-packages/nvidia/cu*/include/cuda.h >/dev/null 2>&1 \
	  || $(BIN)/pip install -q nvidia-cuda-runtime
	$(MAKE) -C orion_virt/client/native OUT=$(CURDIR)/build/native PYTHON=$(abspath $(BIN)/python)
