#!/usr/bin/env bash
# `make images-arm64`: the cpu image for linux/arm64 (Jetson, Raspberry-class boards) built under emulation, then
# inside that image:
#   1. the tiny model generated through the gateway with the local backend (torch-fp32 and the phone's
#      torch-int8-lowmem), peak RSS of each gateway process printed;
#   2. the Triton path (issue 15): the tiny model's cpu repository (onnx-fp32) exported on this host (a model
#      repository is architecture-independent; why not inside the arm64 image: below), served by `edgediff triton`
#      inside the arm64 image and generated through an arm64 gateway (`--backend triton`), as the cpu profile of
#      compose.yaml wires them; skipped with the reason printed when the host's .venv cannot export ONNX;
#   3. with EDGEDIFF_ARM64_CELEBAHQ=1 (slow under emulation: tens of minutes), one celebahq-256 image (synthetic
#      weights, 2 DDIM steps: the per-step peak repeats every step) with the phone variant torch-int8-lowmem in a
#      fresh process, benchmarks/lowmem_peak.py mounted read-only: its peak RSS (VmHWM) and timings, one JSON line.
#
# Settings (environment):
#   EDGEDIFF_ARM64_BUILD=0     reuse the image already built (default 1: build it; layers are reused)
#   EDGEDIFF_ARM64_TRITON=0    skip step 2
#   EDGEDIFF_ARM64_CELEBAHQ=1  run step 3
#   EDGEDIFF_ARM64_PORT        host port of the gateway (default 50071; Triton's HTTP port is that + 1)
#
# Under qemu-user every peak RSS printed here (VmHWM of the emulated process) includes qemu's own memory and its
# translated code: it is not an arm64 board's or a phone's number, and the times say nothing about arm64 speed.
#
# Needs a Docker engine, root (debootstrap for the arm64 base when python:3.11-slim-bookworm cannot be pulled), the
# project's .venv (the gRPC client; the host export of step 2) and, on an x86-64 host, Debian's qemu-user-static +
# binfmt-support (installed, and binfmt_misc mounted, here when missing). Times each step; the numbers of a run are
# in benchmarks/RESULTS.md. Everything it starts is removed at the end (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-build-lib.sh
native=$(native_arch)
if [ "$native" != arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v update-binfmts >/dev/null; then
      log "installing qemu-user-static + binfmt-support (arm64 emulation)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static binfmt-support \
        >/dev/null
    fi
    # A VM or container without systemd may not have binfmt_misc mounted: the package's registration then did nothing.
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
    || { echo "error: no arm64 emulation (binfmt qemu-aarch64)" >&2; exit 1; }
fi
tag=edgediff-cpu:$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)$([ "$native" = arm64 ] || echo -arm64)
t0=$(date +%s)
if [ "${EDGEDIFF_ARM64_BUILD:-1}" = 0 ] && image_exists "$tag"; then
  log "EDGEDIFF_ARM64_BUILD=0: reusing $tag"
else
  bash scripts/build-images.sh --arch arm64 --no-prometheus
  log "arm64 build: $(( $(date +%s) - t0 )) s"
fi

id=arm64check-$$
port=${EDGEDIFF_ARM64_PORT:-50071}
work=$(mktemp -d /tmp/edgediff-arm64.XXXXXX)
cleanup() {
  docker rm -f "$id-gateway" "$id-triton" "$id-celebahq" >/dev/null 2>&1 || true
  docker network rm "$id-net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker run --rm --platform linux/arm64 "$tag" python -c \
  "import platform, torch; print('arch', platform.machine(), 'torch', torch.__version__, 'cuda', torch.version.cuda)"

# One Generate (tiny, 2 steps) through the gateway published on 127.0.0.1:$1, which must answer with variant $2.
generate() {
  .venv/bin/python - "$1" "$2" "$3" <<'PY'
import sys, time
from services.gateway.client import GeneratorClient
target, variant, label = f"127.0.0.1:{sys.argv[1]}", sys.argv[2], sys.argv[3]
with GeneratorClient(target, timeout_s=1800) as client:
    start = time.monotonic()
    client.wait_serving(timeout_s=1800)
    ready = time.monotonic() - start
    start = time.monotonic()
    reply = client.generate(seed=1, steps=2)
    took = time.monotonic() - start
    assert reply.variant == variant, reply.variant
    assert reply.images and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in reply.images), "no PNG"
    print(f"arm64 gateway ({label}, {variant}) serving after {ready:.0f} s; Generate (tiny, 2 steps) -> "
          f"{len(reply.images)} PNG ({len(reply.images[0])} bytes) in {took:.1f} s")
PY
}

# --- 1. the gateway with the local backend (plain PyTorch, as on a phone or a board without Triton) ---
for variant in torch-fp32 torch-int8-lowmem; do
  t2=$(date +%s)
  docker run -d --name "$id-gateway" --platform linux/arm64 -p "127.0.0.1:$port:50051" "$tag" \
    edgediff serve --backend local --model tiny --variant "$variant" --host 0.0.0.0 --port 50051 \
    --metrics-port 0 >/dev/null
  generate "$port" "$variant" "local backend"
  docker exec "$id-gateway" sh -c 'grep VmHWM /proc/1/status' || true  # peak RSS, qemu-user included
  docker rm -f "$id-gateway" >/dev/null
  log "arm64 $variant: serve + generate $(( $(date +%s) - t2 )) s"
done

# --- 2. the Triton path: host export, arm64 Triton, arm64 gateway (compose.yaml's cpu profile, by hand) ---
# Under qemu-user, importing onnxruntime (1.32.0, aarch64) segfaults when it sees the x86-64 host's
# /sys/devices/system/cpu ("Fatal Python error: Segmentation fault" in onnxruntime/capi/_pybind_state.py, then
# "qemu: uncaught target signal 11 (Segmentation fault) - core dumped", after which the emulated process hangs
# instead of exiting): every Triton stub of an onnx part, and `edgediff export` (onnxsim imports onnxruntime).
# torch's "xbyak_aarch64 ... Can't open MIDR_EL1 sysfs entry" line printed before it is only a warning. An empty
# /sys/devices/system/cpu (--tmpfs) hides that tree: cpuinfo then says "failed to parse the list of possible
# processors" and onnxruntime runs with its defaults. The mask is for emulation only; a real arm64 machine needs none.
# With the mask, `edgediff export` inside the image still fails: its torch 2.9.1 (PyPI's last CPU-only aarch64
# wheel) cannot export the VQ decoder to ONNX (torch/onnx/.../symbolic_opset9.py, cdist: "assert row_size_x1 is not
# None"), which torch 2.13.0 does. So the repository is exported here: the files it writes (ONNX models,
# config.pbtxt, the Python models) hold nothing architecture-specific.
if [ "${EDGEDIFF_ARM64_TRITON:-1}" = 0 ]; then
  log "Triton path skipped (EDGEDIFF_ARM64_TRITON=0)"
elif ! .venv/bin/python -c "import onnx, onnxruntime" 2>/dev/null; then
  log "Triton path skipped: this host's .venv cannot export ONNX (pip install -e '.[onnx]')"
else
  t3=$(date +%s)
  EDGEDIFF_CACHE_DIR="$work/cache" .venv/bin/edgediff export --target cpu --model tiny --variants onnx-fp32 \
    --repo "$work/repo" >"$work/export.log" 2>&1 || { tail -20 "$work/export.log" >&2; exit 1; }
  chmod -R a+rX "$work/repo"   # read by the image's non-root user
  log "host export (tiny, onnx-fp32): $(( $(date +%s) - t3 )) s"
  docker network create "$id-net" >/dev/null
  t4=$(date +%s)
  mask=()
  [ "$native" = arm64 ] || mask=(--tmpfs /sys/devices/system/cpu:ro)   # emulation only: see above
  docker run -d --name "$id-triton" --platform linux/arm64 --network "$id-net" --network-alias triton \
    --no-healthcheck "${mask[@]}" --shm-size 1g -p "127.0.0.1:$((port + 1)):8000" -v "$work/repo:/models:ro" \
    "$tag" edgediff triton --repo /models --host 0.0.0.0 --http-port 8000 --grpc-port 8001 --metrics-port 8002 \
    --startup-timeout 1800 >/dev/null
  until .venv/bin/python -m services.healthcheck http "http://127.0.0.1:$((port + 1))/v2/health/ready" 2>/dev/null; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$id-triton")" != true ] \
       || [ $(( $(date +%s) - t4 )) -gt 1800 ]; then
      docker logs --tail 40 "$id-triton" >&2 || true
      echo "error: Triton inside the arm64 image did not become ready (its log above)" >&2
      exit 1
    fi
    sleep 5
  done
  log "arm64 Triton ready after $(( $(date +%s) - t4 )) s"
  docker run -d --name "$id-gateway" --platform linux/arm64 --network "$id-net" --no-healthcheck \
    -p "127.0.0.1:$port:50051" "$tag" edgediff serve --backend triton --model tiny --variant onnx-fp32 \
    --host 0.0.0.0 --port 50051 --metrics-port 0 --triton-url triton:8001 >/dev/null
  generate "$port" onnx-fp32 "triton backend"
  # peak RSS of every process in the Triton container (server, launcher, one Python stub per model; qemu included)
  docker exec "$id-triton" sh -c 'for p in /proc/[0-9]*; do [ "${p#/proc/}" = $$ ] && continue
      h=$(grep VmHWM "$p/status" 2>/dev/null) || continue; a=$(tr "\0" " " <"$p/cmdline")
      m=$(echo "$a" | grep -o "/models/[a-z0-9_]*" | head -1)
      echo "$h  $(echo "$a" | cut -d" " -f1-4 | xargs -n1 basename | tr "\n" " ")${m#/models/}"; done' || true
  docker rm -f "$id-gateway" "$id-triton" >/dev/null
  docker network rm "$id-net" >/dev/null
  log "arm64 Triton path: export + serve + generate $(( $(date +%s) - t3 )) s"
fi

# --- 3. celebahq-256 with the phone variant: peak RSS of one image in a fresh process ---
if [ "${EDGEDIFF_ARM64_CELEBAHQ:-0}" = 1 ]; then
  t5=$(date +%s)
  docker run --rm --name "$id-celebahq" --platform linux/arm64 --no-healthcheck \
    -v "$PWD/benchmarks:/opt/edgediff/benchmarks:ro" "$tag" \
    python benchmarks/lowmem_peak.py --variant torch-int8-lowmem --model celebahq-256 --steps 2
  log "arm64 celebahq-256 torch-int8-lowmem (2 steps, peak RSS above, qemu-user included): $(( $(date +%s) - t5 )) s"
fi
log "arm64 check total $(( $(date +%s) - t0 )) s"
