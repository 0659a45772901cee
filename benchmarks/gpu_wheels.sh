#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels benchmarks/gpu_check.sh needs on a GPU machine without network.
#
#   benchmarks/gpu_wheels.sh [DIR]     # default: .whl (keep it out of git: echo /.whl/ >> .git/info/exclude)
#
# The GPU image this was written for (CUDA PyTorch, onnx, onnxruntime, nvidia-ml-py, matplotlib, pytest; Python 3.12)
# lacks only diffusers among edgediff's own dependencies, so that is all this fetches by default: one pure-Python
# wheel (about 6 MB), at the version this checkout's .venv uses. diffusers' own dependencies (huggingface-hub,
# safetensors, regex, requests, filelock, numpy, Pillow) are in that image; importlib_metadata is needed only
# before Python 3.8. More packages: GPU_WHEELS="diffusers==X onnxsim==Y" (onnxsim makes the ONNX variants
# available; their CUDA provider needs onnxruntime-gpu, whose wheel is far above a 64 MiB carry). Not fetched:
# tensorrt and nvidia-pytriton (55 MB), too large to travel with the tree.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$REPO/.whl}"
PYVER="${GPU_WHEELS_PYTHON:-3.12}"
version="$("$REPO/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("diffusers"))' 2>/dev/null || true)"
PACKAGES="${GPU_WHEELS:-diffusers${version:+==$version}}"

mkdir -p "$DIR"
# shellcheck disable=SC2086  # PACKAGES is a list
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR" $PACKAGES
du -ch "$DIR"/*.whl | tail -n 1
