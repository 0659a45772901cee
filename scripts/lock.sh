#!/usr/bin/env bash
# `make lock`: regenerate the hash-pinned locks from pyproject.toml after a dependency changed there.
#
#   requirements.lock               `.[dev]`: what `make setup` (and so CI) installs
#   docker/requirements-cpu.lock    the extras docker/cpu.Dockerfile serves with (no test or lint tools)
#
# Both are universal (every platform and Python >= 3.11 the project supports: the x86-64 and arm64 CPU images, this
# machine) and pin every package with the sha256 of each of its files, so `pip install --require-hashes` refuses
# anything else. tests/test_supply_chain.py fails when pyproject.toml and a lock disagree.
#
# torch is resolved but left out: it is installed in its own step before the lock (`make setup`, the images), as
# the build the machine needs (the CPU wheel from download.pytorch.org or a local wheelhouse, a CUDA build in the GPU
# images), and those builds have different files (and hashes) for one version. It is resolved as the CPU build
# (TORCH_VERSION+cpu) so that the CUDA-only dependencies of PyPI's Linux torch (nvidia-*, triton) stay out of the
# lock. That wheel comes from wheelhouse/, pip's find-links ($PIP_FIND_LINKS) or $TORCH_INDEX_URL (set it to
# https://download.pytorch.org/whl/cpu on a machine that has neither).
#
# Needs uv (`pip install uv`: $UV, default .venv/bin/uv, else uv on PATH) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"  # e.g. https://download.pytorch.org/whl/cpu where no local wheel exists
INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}"
UV="${UV:-.venv/bin/uv}"
[ -x "$UV" ] || UV="$(command -v uv)" || { echo "lock.sh: uv not found: pip install uv" >&2; exit 1; }

sources=(--index-url "$INDEX_URL")
[ -n "$TORCH_INDEX_URL" ] && sources+=(--extra-index-url "$TORCH_INDEX_URL" --index-strategy unsafe-best-match)
for dir in wheelhouse ${PIP_FIND_LINKS:-}; do
    [ -d "$dir" ] && sources+=(--find-links "$dir")
done
override="$(mktemp)"
trap 'rm -f "$override"' EXIT
echo "torch==${TORCH_VERSION}+cpu" >"$override"

compile() {  # OUTPUT EXTRA...
    local out="$1"
    shift
    local extras=()
    for extra in "$@"; do extras+=(--extra "$extra"); done
    "$UV" pip compile pyproject.toml "${extras[@]}" --universal --python-version 3.11 --generate-hashes \
        --override "$override" --no-emit-package torch "${sources[@]}" --quiet \
        --custom-compile-command "scripts/lock.sh (make lock)" -o "$out"
    echo "lock.sh: wrote $out ($(grep -c '^[a-z0-9]' "$out") packages, torch excluded)"
}

compile requirements.lock dev
compile docker/requirements-cpu.lock onnx openvino triton serve telemetry loadtest
