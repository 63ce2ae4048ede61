#!/usr/bin/env bash
# Create ./.venv and install vaegen (editable) with the PyTorch build this host can use.
#
#   bash deploy/install.sh          # the product
#   bash deploy/install.sh test     # the product and what its test suite needs
#
# Why a script and not a bare `pip install -e .`: PyPI's Linux torch wheels are CUDA builds that
# pull about 4 GB of nvidia-* libraries and triton, which a CPU-only host cannot use. So:
#   * a host where an NVIDIA driver answers (`nvidia-smi -L`) gets PyPI's CUDA build, as pip would;
#   * any other host gets a CPU build: deploy/torch-cpu-constraints.txt refuses the CUDA builds
#     (they are the ones that need triton), and PyTorch's CPU index is added when it is reachable,
#     so pip picks the newest `+cpu` wheel there, or one from a local wheelhouse (pip's find-links)
#     on a mirrored or air-gapped host.
# VAEGEN_TORCH=cpu|cuda overrides the detection (an image built on a CPU box for GPU nodes);
# VAEGEN_TORCH_CPU_INDEX names another CPU wheel index; VAEGEN_VENV another venv folder.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
venv="${VAEGEN_VENV:-.venv}"
cpu_index="${VAEGEN_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
torch="${VAEGEN_TORCH:-auto}"

if [ "$torch" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then torch=cuda; else torch=cpu; fi
fi
case "$torch" in
  cpu | cuda) ;;
  *) echo "deploy/install.sh: VAEGEN_TORCH must be cpu, cuda or auto, got '$torch'" >&2; exit 2 ;;
esac

target="."
[ -n "$extras" ] && target=".[$extras]"
# pip byte-compiles every installed file on one core (38 s of the install here); compileall below uses them all.
pip_args=(install -q --no-compile -e "$target")
if [ "$torch" = cpu ]; then
  pip_args+=(--constraint deploy/torch-cpu-constraints.txt)
  # An unreachable index costs pip minutes of retries per package: probe it once, 5 s at most.
  if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$cpu_index/torch/" 2>/dev/null; then
    pip_args+=(--extra-index-url "$cpu_index")
  fi
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# The venv's own pip is the one Python bundles (23.x on 3.11): with it `install.sh test` took 109 s here,
# 78 s after this upgrade (the same packages; README, "What deploy/install.sh installs"). Where no index
# offers a newer pip, the bundled one does the install.
"$venv/bin/python" -m pip install -q --upgrade pip ||
  echo "deploy/install.sh: could not upgrade pip; going on with $("$venv/bin/pip" --version)" >&2
echo "deploy/install.sh: torch build: $torch; installing $target into $venv" >&2
if ! "$venv/bin/pip" "${pip_args[@]}"; then
  if [ "$torch" = cpu ] && [[ " ${pip_args[*]} " != *" --extra-index-url "* ]]; then
    # Without PyTorch's CPU index, only a local wheelhouse can supply a CPU build: say how to give one.
    echo "deploy/install.sh: no CPU build of torch found: $cpu_index did not answer and pip's find-links" \
      "(pip config, PIP_FIND_LINKS) hold none; point PIP_FIND_LINKS at a folder with a torch +cpu wheel," \
      "VAEGEN_TORCH_CPU_INDEX at a reachable index, or use VAEGEN_TORCH=cuda" >&2
  fi
  exit 1
fi
# Files that do not compile (a package's Python 2 examples, say) are skipped, as pip skips them. The
# packages' own test suites (3,500 of the 21,000 files; nothing imports them) are left to compile if ever used.
"$venv/bin/python" -m compileall -q -j 0 -x '/tests?/' \
  "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null 2>&1 || true
"$venv/bin/python" -c "import torch; print('deploy/install.sh: torch', torch.__version__, 'CUDA', torch.version.cuda)" >&2
