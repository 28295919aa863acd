#!/usr/bin/env bash
# Prints the environment the build and the tests need, provisioning it once per user.
#
# libtorch 2.13 comes from the torch==2.13.0 wheel, installed with pip into a virtual
# environment in a per-user cache folder outside the repository, so every clone reuses it.
# That environment is also the real PyTorch the parity tests compare against.
# A user who already has libtorch 2.13 sets LIBTORCH: then nothing is installed, and the
# tests that need Python's torch run only if TCH_PRUNE_PYTHON names a python that has it.
set -euo pipefail

torch_version=2.13.0
cache="${TCH_PRUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-prune}"
venv="$cache/venv-torch-$torch_version"

if [ -n "${LIBTORCH:-}" ]; then
  if [ ! -d "$LIBTORCH/lib" ]; then
    echo "LIBTORCH=$LIBTORCH has no lib/ folder: point it at a libtorch $torch_version install" >&2
    exit 1
  fi
  echo "export LIBTORCH=$LIBTORCH"
  [ -n "${TCH_PRUNE_PYTHON:-}" ] && echo "export TCH_PRUNE_PYTHON=$TCH_PRUNE_PYTHON"
  exit 0
fi

# torchvision pairs 0.28 with torch 2.13; it and transformers build the real architectures of
# tests/cli/architectures.rs (random init, nothing downloaded). torch-pruning is `make bench`'s
# comparison for `tch-prune shrink` (scripts/bench_shrink.py); it needs no other torch.
torchvision_version=0.28
torch_pruning_version=1.6.1
if ! "$venv/bin/python" -c "import torch, safetensors, numpy, sklearn, torchvision, transformers, torch_pruning; from importlib.metadata import version; assert torch.__version__.startswith('$torch_version'); assert torchvision.__version__.startswith('$torchvision_version.'); assert version('torch-pruning') == '$torch_pruning_version'" 2>/dev/null; then
  echo "Provisioning torch==$torch_version into $venv (once per user, about 5 GB)..." >&2
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "torch==$torch_version" "torchvision==$torchvision_version.*" safetensors numpy scikit-learn transformers "torch-pruning==$torch_pruning_version" >&2
fi

# The headers the NCCL part of the crate compiles against (build.rs): the wheel brings NCCL's
# and the CUDA runtime's, not the two header-only packages those include. Of the wheel's CUDA
# version; nothing when torch is a CPU build.
if ! "$venv/bin/python" -c "from importlib.metadata import version; version('nvidia-cuda-crt'); version('nvidia-cuda-cccl')" 2>/dev/null; then
  cuda=$("$venv/bin/python" -c "from importlib.metadata import version; print('.'.join(version('nvidia-cuda-runtime').split('.')[:2]))" 2>/dev/null || true)
  if [ -n "$cuda" ]; then
    echo "Provisioning CUDA $cuda's crt and cccl headers into $venv (for NCCL)..." >&2
    "$venv/bin/pip" install --quiet "nvidia-cuda-crt==$cuda.*" "nvidia-cuda-cccl==$cuda.*" >&2
  fi
fi

site=$("$venv/bin/python" -c "import torch, os; print(os.path.dirname(torch.__file__))")
echo "export LIBTORCH=$site"
echo "export TCH_PRUNE_PYTHON=$venv/bin/python"
