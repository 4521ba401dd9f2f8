# make test: set up .venv from nothing (if needed), build the extension, run every test.
# make demo: the same setup, then the main job.
# torch: the one already installed for $(PYTHON) if any (e.g. a CUDA build on a GPU
# machine, reached through --system-site-packages), else the CPU wheel torch==$(TORCH_VERSION).

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export MAX_JOBS ?= 2

SOURCES := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)

.PHONY: test pytest ctest test-e2cnn demo bench gpu-wheels clean

test: ctest test-e2cnn pytest

pytest: $(VENV)/.installed
	$(PY) benchmarks/bench_expand_filter.py --quick
	GER_KERNELS_BENCH_SHAPES=quick $(PY) -m pytest -q benchmarks/test_microbench.py --benchmark-disable
	GER_KERNELS_REQUIRE_EXTENSION=1 $(PY) -m pytest tests

ctest: $(VENV)/.installed
	cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

# e2cnn needs numpy<2: its import test runs in a venv of its own, on this source tree and the
# extension built into it by the main venv. triton is installed there too: without it, pytest's
# tests/ on sys.path makes tests/triton pass for a namespace package `triton`, which breaks
# torch._dynamo's import (ger_kernels imports it through torch.compiler).
E2CNN_VENV ?= .venv-e2cnn
test-e2cnn: $(VENV)/.installed $(E2CNN_VENV)/.ready
	GER_KERNELS_REQUIRE_E2CNN=1 PYTHONPATH=$(CURDIR) $(E2CNN_VENV)/bin/python -m pytest -p no:cacheprovider \
		-W ignore::DeprecationWarning -W ignore::UserWarning tests/convert/test_e2cnn.py

$(E2CNN_VENV)/.ready:
	$(PYTHON) -m venv $(E2CNN_VENV)
	$(E2CNN_VENV)/bin/python -m pip install torch==$(TORCH_VERSION) "numpy<2" e2cnn pytest "triton>=3.6"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m ger_kernels demo --out demo_output

# CPU comparison table (a minute or two) and microbenchmarks, results under benchmarks/results/
bench: $(VENV)/.installed $(E2CNN_VENV)/.ready
	$(PY) benchmarks/run.py --out benchmarks/results/cpu-float32
	$(PY) -m pytest benchmarks/test_microbench.py --benchmark-json benchmarks/results/micro-cpu.json
	$(PY) benchmarks/bench_expand_filter.py

# The GPU machine has no network: the nvidia-cutlass wheel (CuTe headers) is downloaded here and carried
# with the device call (build/wheels); gpu_suite.sh's build stage installs it.
gpu-wheels:
	$(PYTHON) -m pip download --no-deps -d build/wheels nvidia-cutlass
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d build/wheels nibabel

$(VENV)/.torch:
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the torch installed for $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PIP) install torch==$(TORCH_VERSION); \
	fi
	$(PIP) install setuptools wheel ninja numpy
	$(PIP) install --no-deps nvidia-cutlass  # headers only: its Python dependencies are not needed
	touch $@

$(VENV)/.installed: $(VENV)/.torch $(SOURCES)
	$(PIP) install --no-build-isolation -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) $(E2CNN_VENV) build ger_kernels/_C*.so *.egg-info
