#!/usr/bin/env bash
# `make images-arm64`: the cpu image for linux/arm64 (Jetson, Raspberry-class boards) built under emulation, then
# the tiny model generated through the gateway (local backend: torch-fp32 and the phone's torch-int8-lowmem)
# inside that image.
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
port=${EDGEDIFF_ARM64_PORT:-50071}
cleanup() { docker rm -f "$id-gateway" >/dev/null 2>&1 || true; }
trap cleanup EXIT
docker run --rm --platform linux/arm64 "$tag" python -c \
  "import platform, torch; print('arch', platform.machine(), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
# The gateway with the local backend (plain PyTorch, as on a phone or a board without Triton). The Triton path is
# not run here: exporting ONNX under qemu-user crashes in oneDNN's aarch64 JIT (it cannot read MIDR_EL1 under
# emulation: "qemu: uncaught target signal 11"), which real arm64 hardware does not do.
for variant in torch-fp32 torch-int8-lowmem; do
  t2=$(date +%s)
  docker run -d --name "$id-gateway" --platform linux/arm64 -p "127.0.0.1:$port:50051" "$tag" \
    edgediff serve --backend local --model tiny --variant "$variant" --host 0.0.0.0 --port 50051 \
    --metrics-port 0 >/dev/null
  .venv/bin/python - "$port" "$variant" <<'PY'
import sys, time
from services.gateway.client import GeneratorClient
target, variant = f"127.0.0.1:{sys.argv[1]}", sys.argv[2]
with GeneratorClient(target, timeout_s=1800) as client:
    start = time.monotonic()
    client.wait_serving(timeout_s=1800)
    ready = time.monotonic() - start
    start = time.monotonic()
    reply = client.generate(seed=1, steps=2)
    took = time.monotonic() - start
    assert reply.variant == variant, reply.variant
    assert reply.images and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in reply.images), "no PNG"
    print(f"arm64 gateway ({variant}) serving after {ready:.0f} s; Generate (tiny, 2 steps) -> "
          f"{len(reply.images)} PNG ({len(reply.images[0])} bytes) in {took:.1f} s")
PY
  docker exec "$id-gateway" sh -c 'grep VmHWM /proc/1/status' || true  # peak RSS, qemu-user included
  docker rm -f "$id-gateway" >/dev/null
  log "arm64 $variant: serve + generate $(( $(date +%s) - t2 )) s"
done
log "arm64 check total $(( $(date +%s) - t0 )) s"
