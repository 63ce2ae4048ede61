#!/usr/bin/env bash
# The GPU check in one command, on a fresh GPU node: install, run the CUDA tests, measure, write JSON.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options]    # OUT_DIR default: benchmarks/out/gpu_check
#
#   GPU_CHECK_N=10000000        rows of each measurement (small for a CPU self-test, e.g. 2000)
#   GPU_CHECK_INSTALL=0         use ./.venv (or VAEGEN_VENV) as it is instead of installing first
#   VAEGEN_WHEELS=DIR           install offline from a folder of wheels (pip --no-index --find-links DIR)
#   GPU_CHECK_PYTHON=python3    with GPU_CHECK_INSTALL=0: run with this interpreter as it is, this checkout on
#                               PYTHONPATH (a GPU image with torch but no registry access: the parts that need
#                               Ray or MLflow are skipped, saying so, if they are not there)
#
# The install is deploy/install.sh (PyPI's CUDA torch where `nvidia-smi -L` answers), with one difference: where
# the system's python3 already imports a CUDA-enabled torch (GPU images ship one), the venv is made with
# --system-site-packages so that pip keeps that torch instead of downloading 4 GB of another build.
# Everything else (the figures, the skip reasons, the JSON) is benchmarks/gpu_check.py's: see its docstring.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/benchmarks/out/gpu_check}"  # a relative OUT_DIR is the caller's, made absolute before the cd
[ $# -gt 0 ] && shift
mkdir -p "$out" && out="$(cd "$out" && pwd)"
cd "$repo"
venv="${VAEGEN_VENV:-.venv}"

if [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
  if [ -n "${VAEGEN_WHEELS:-}" ]; then
    [ -d "$VAEGEN_WHEELS" ] || { echo "gpu_check.sh: VAEGEN_WHEELS=$VAEGEN_WHEELS is not a folder" >&2; exit 2; }
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$(cd "$VAEGEN_WHEELS" && pwd)"
  fi
  has_cuda_torch="import torch, sys; sys.exit(not torch.cuda.is_available())"
  if [ ! -x "$venv/bin/python" ] && python3 -c "$has_cuda_torch" 2>/dev/null; then
    echo "gpu_check.sh: python3's CUDA torch is reused: $venv gets --system-site-packages" >&2
    python3 -m venv --system-site-packages "$venv"
  fi
  bash deploy/install.sh
  # The CUDA tests need pytest, which the product's install leaves out (the test extra would add polars, DuckDB, ...).
  "$venv/bin/python" -c "import pytest" 2>/dev/null || "$venv/bin/pip" install -q "pytest>=8" "pytest-timeout>=2.3"
fi
python="$venv/bin/python"
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then  # an interpreter that has the packages but not vaegen: the checkout on its path
  python="$GPU_CHECK_PYTHON"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v "$python" >/dev/null || { echo "gpu_check.sh: no $python; run without GPU_CHECK_INSTALL=0" >&2; exit 2; }
PYTHONUNBUFFERED=1 exec "$python" benchmarks/gpu_check.py --out "$out" --n "${GPU_CHECK_N:-10000000}" "$@"
