#!/usr/bin/env bash
# `make images-arm64`: the cpu image for linux/arm64 (Jetson, Raspberry-class boards) built under emulation, then
# the tiny model exported, served by Triton and generated through the gateway, all inside that image.
#
# Needs a Docker engine, root (debootstrap for the arm64 base when python:3.11-slim-bookworm cannot be pulled) and,
# on an x86-64 host, Debian's qemu-user-static + binfmt-support (installed here when missing). Times each step; the
# numbers of a run are in benchmarks/RESULTS.md. Everything it starts is removed at the end (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-build-lib.sh
native=$(native_arch)
if [ "$native" != arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing qemu-user-static + binfmt-support (arm64 emulation)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static binfmt-support >/dev/null
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "error: no arm64 emulation (binfmt qemu-aarch64)" >&2; exit 1; }
fi
tag=edgediff-cpu:$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)$([ "$native" = arm64 ] || echo -arm64)
t0=$(date +%s)
bash scripts/build-images.sh --arch arm64 --no-prometheus
t1=$(date +%s)
log "arm64 build: $((t1 - t0)) s"

id=arm64check-$$
net=$id-net vol=$id-models port=${EDGEDIFF_ARM64_PORT:-50071}
run() { docker run --platform linux/arm64 --network "$net" -v "$vol:/models" "$@"; }
cleanup() {
  docker rm -f "$id-triton" "$id-gateway" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  docker volume rm "$vol" >/dev/null 2>&1 || true
}
trap cleanup EXIT
docker network create "$net" >/dev/null
docker volume create "$vol" >/dev/null
docker run --rm --platform linux/arm64 "$tag" python -c \
  "import platform, torch; print('arch', platform.machine(), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
run --rm "$tag" edgediff export --target cpu --model tiny --variants onnx-fp32 --repo /models
t2=$(date +%s)
log "arm64 export (tiny, onnx-fp32): $((t2 - t1)) s"
run -d --name "$id-triton" --network-alias triton --shm-size 1g "$tag" \
  edgediff triton --repo /models --host 0.0.0.0 --http-port 8000 --grpc-port 8001 --metrics-port 8002 >/dev/null
run -d --name "$id-gateway" -p "127.0.0.1:$port:50051" "$tag" \
  edgediff serve --backend triton --model tiny --variant onnx-fp32 --host 0.0.0.0 --port 50051 \
  --metrics-port 9401 --triton-url triton:8001 >/dev/null
.venv/bin/python - "$port" <<'PY'
import sys, time
from services.gateway.client import GeneratorClient
target = f"127.0.0.1:{sys.argv[1]}"
with GeneratorClient(target, timeout_s=1800) as client:
    start = time.monotonic()
    client.wait_serving(timeout_s=1800)
    ready = time.monotonic() - start
    start = time.monotonic()
    reply = client.generate(seed=1, steps=2)
    took = time.monotonic() - start
    assert reply.images and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in reply.images), "no PNG"
    print(f"arm64 gateway serving after {ready:.0f} s; Generate (tiny, 2 steps) -> {len(reply.images)} PNG "
          f"({len(reply.images[0])} bytes) in {took:.1f} s")
PY
t3=$(date +%s)
log "arm64 serve + generate: $((t3 - t2)) s; total $((t3 - t0)) s"
