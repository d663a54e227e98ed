# The README's commands. Each target installs what it needs: a virtual
# environment with torch and the project built into it (editable).
#
#   make bench      the benchmark suite (the project's main job), the targets, the deep-encoder penalty
#   make test       lint + the test suite + a quick benchmark smoke run
#   make gpu-check  on a GPU machine with no network: build, GPU tests, targets, sanitizer (8 min)
#   make test-low   the test suite at the low end of the supported range (the GPU
#                   machine's stack: python 3.12, torch 2.11.0, triton 3.6.0), CPU build
#
# Variables: PYTHON (interpreter that creates the venv), VENV, TORCH_SPEC.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
# The low end of the supported range (pyproject.toml, README "Supported versions").
LOW_PYTHON ?= env PYENV_VERSION=3.12.1 python3.12
LOW_VENV ?= .venv-low
LOW_TORCH_SPEC ?= torch==2.11.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.fastcae-deps
BUILD_STAMP := $(VENV)/.fastcae-build
EXTENSION_SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null)
BENCH_OUT ?= benchmarks/results

.PHONY: install test test-low bench lint gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)" numpy ninja setuptools wheel
	$(PIP) install pytest pytest-benchmark hypothesis expecttest ruff matplotlib tqdm scikit-learn scikit-image
	touch $@

# Rebuilt only when the C++/CUDA sources change.
$(BUILD_STAMP): $(DEPS_STAMP) $(EXTENSION_SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

install: $(BUILD_STAMP)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q
	FASTCAE_BENCH_QUICK=1 $(PY) -m pytest benchmarks -q -p no:cacheprovider

# torch 2.11.0 brings triton 3.6.0. The CUDA kernels are compiled by `make test`'s
# build; this one is CPU-only, to keep CI's time.
test-low:
	$(MAKE) test PYTHON="$(LOW_PYTHON)" VENV=$(LOW_VENV) TORCH_SPEC=$(LOW_TORCH_SPEC) FASTCAE_CUDA=0

bench: install
	FASTCAE_BENCH_OUT=$(BENCH_OUT) $(PY) -m pytest benchmarks -p no:cacheprovider
	$(PY) -m benchmarks.targets --device $$($(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')") --out-dir $(BENCH_OUT)
	$(PY) -m benchmarks.deep --out-dir $(BENCH_OUT)

# OUT=folder for the results. Runs in $(PYTHON) as it is (no venv, nothing installed); see
# DEVELOPERS.md, "The GPU check". `python3 scripts/gpu_check.py --plan` shows its phases.
gpu-check:
	$(PYTHON) scripts/gpu_check.py --out $(OUT)

clean:
	rm -rf build fastcae/_C*.so $(BUILD_STAMP) $(LOW_VENV)/.fastcae-build
