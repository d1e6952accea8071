# pycompress: `make demo` (the main job on the bundled model) and `make test` (the whole check).
# Each sets up its own virtual environment (.venv) first; see tools/setup_env.sh.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: demo test gpu-test setup bench cpp-test clean

setup:
	PYTHON=$(PYTHON) VENV=$(VENV) tools/setup_env.sh test

demo:
	PYTHON=$(PYTHON) VENV=$(VENV) tools/setup_env.sh demo
	$(PY) -m pycompress.cli demo

# The CPU suite, the Triton kernels through the interpreter, the nvcc compile check of every CUDA
# source (sm_80, sm_90a), the AOT compile + SASS check of every Triton kernel, then the C++ tests.
# pytest exits non-zero (5) when it collects no test, which fails the target.
test: setup
	$(PY) -m pytest -q -ra tests
	$(MAKE) cpp-test

# GPU machines: the tests marked cuda (CUDA and Triton kernels on the device).
gpu-test: setup
	PYCOMPRESS_TEST_GPU=1 $(PY) -m pytest -q -ra -m cuda tests

cpp-test:
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		-DPython_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/cmake -j $$(nproc)
	cd build/cmake && ctest --output-on-failure

bench: setup
	$(PY) -m benchmarks.run --family int8
	$(PY) -m benchmarks.run --family lowbit
	$(PY) -m benchmarks.run --family sparse
	$(PY) -m benchmarks.run --family lowrank

clean:
	rm -rf build *.egg-info pycompress/*.so
