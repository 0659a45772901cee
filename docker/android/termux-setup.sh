#!/data/data/com.termux/files/usr/bin/bash
# edgediff on an Android phone, inside Termux (Android has no Docker): the gRPC gateway with the `local` backend
# (plain PyTorch, no Triton, ONNX Runtime or OpenVINO) and the telemetry exporter (battery sysfs reader), as the
# study ran its phone. See docker/android/README.md.
#
#   bash docker/android/termux-setup.sh install   # Termux packages + edgediff[serve,telemetry] from this checkout
#   bash docker/android/termux-setup.sh start     # gateway on :50051 (metrics :9401), exporter on :9400
#   bash docker/android/termux-setup.sh status    # pids and health
#   bash docker/android/termux-setup.sh stop
#
# Settings: EDGEDIFF_MODEL (celebahq-256; `tiny` to try the plumbing first), EDGEDIFF_WEIGHTS (a diffusers-format
# folder on the phone; without it, seeded synthetic weights, labelled as such), EDGEDIFF_BIND_ADDRESS (127.0.0.1;
# 0.0.0.0 to serve other machines on the Wi-Fi, then also set EDGEDIFF_TOKEN_FILE), EDGEDIFF_THREADS,
# EDGEDIFF_IDLE_SECONDS (measure the idle baseline this long at exporter start; 0 = none), EDGEDIFF_MAX_MEMORY
# (the gateway's memory budget, e.g. 1.5G: its "edgediff tune --max-memory" profile when one fits, else under 3G, or
# total RAM under 3 GiB, torch-int8-lowmem with UniPC 5 steps),
# EDGEDIFF_BATTERY_CURRENT_SIGN / EDGEDIFF_BATTERY_CURRENT_UNIT (auto; how this phone's driver reports current_now).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
state_dir="${HOME}/.edgediff"
log_dir="${state_dir}/logs"
model="${EDGEDIFF_MODEL:-celebahq-256}"
bind="${EDGEDIFF_BIND_ADDRESS:-127.0.0.1}"
# edgediff.constants: GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT, EXPORTER_PORT.
gateway_port=50051
gateway_metrics_port=9401
exporter_port=9400

log() { printf 'edgediff-termux: %s\n' "$*" >&2; }

require_termux() {
  if [ -z "${PREFIX:-}" ] || ! command -v pkg >/dev/null 2>&1; then
    log "this script runs inside Termux on Android (pkg not found); on Linux use docker/README.md instead"
    exit 2
  fi
}

install() {
  require_termux
  pkg update -y
  # python-torch is Termux's own PyTorch build (aarch64/arm); pip has no PyTorch wheels for Android.
  # clang, rust and binutils build the few dependencies that have no Android wheel (safetensors, psutil).
  pkg install -y python python-pip python-torch python-numpy python-pillow clang rust binutils termux-api
  # Prebuilt gRPC saves a long native build when the repository has it; pip builds it otherwise.
  pkg install -y python-grpcio || log "python-grpcio not in this Termux repository; pip will build grpcio (slow)"
  # No triton, onnx, openvino or gpu extras: the local backend is plain PyTorch.
  python -m pip install --upgrade "${repo}[serve,telemetry]"
  edgediff --version
  log "installed; next: bash ${BASH_SOURCE[0]} start"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_one() {  # name, then the command
  local name="$1"; shift
  local pid_file="${state_dir}/${name}.pid"
  if pid_alive "${pid_file}"; then
    log "${name} already runs (pid $(cat "${pid_file}"))"
    return 0
  fi
  nohup "$@" >"${log_dir}/${name}.log" 2>&1 &
  echo $! >"${pid_file}"
  log "${name} started (pid $!, log ${log_dir}/${name}.log)"
}

start() {
  mkdir -p "${log_dir}"
  # Keep the CPU awake while the screen is off; Android otherwise suspends Termux mid-generation.
  command -v termux-wake-lock >/dev/null 2>&1 && termux-wake-lock
  local token_args=()
  if [ -n "${EDGEDIFF_TOKEN_FILE:-}" ]; then
    token_args=(--token-file "${EDGEDIFF_TOKEN_FILE}")
  elif [ "${bind}" != "127.0.0.1" ]; then
    log "warning: serving on ${bind} without EDGEDIFF_TOKEN_FILE: anyone on this network can generate"
  fi
  local memory_args=()
  if [ -n "${EDGEDIFF_MAX_MEMORY:-}" ]; then
    memory_args=(--max-memory "${EDGEDIFF_MAX_MEMORY}")
  fi
  # One generation at a time and a short queue: a phone has the memory for one celebahq-256 pipeline.
  start_one gateway \
    edgediff serve --backend local --model "${model}" --host "${bind}" --port "${gateway_port}" \
      --metrics-port "${gateway_metrics_port}" --max-concurrency 1 --max-queue 2 --max-batch 1 "${token_args[@]}" "${memory_args[@]}"
  # The battery reader needs the phone unplugged (it marks readings taken on a charger or USB as invalid).
  start_one exporter \
    edgediff exporter --host "${bind}" --port "${exporter_port}" --interval 0.1 \
      --idle-seconds "${EDGEDIFF_IDLE_SECONDS:-0}" \
      --battery-current-sign "${EDGEDIFF_BATTERY_CURRENT_SIGN:-auto}" \
      --battery-current-unit "${EDGEDIFF_BATTERY_CURRENT_UNIT:-auto}"
}

stop() {
  local name pid_file
  for name in gateway exporter; do
    pid_file="${state_dir}/${name}.pid"
    if pid_alive "${pid_file}"; then
      kill -TERM "$(cat "${pid_file}")"
      log "${name} stopped"
    fi
    rm -f "${pid_file}"
  done
  command -v termux-wake-unlock >/dev/null 2>&1 && termux-wake-unlock
  return 0
}

status() {
  local rc=0
  if python -m services.healthcheck grpc "127.0.0.1:${gateway_port}"; then
    log "gateway healthy on :${gateway_port}"
  else
    rc=1
  fi
  if python -m services.healthcheck http "http://127.0.0.1:${exporter_port}/metrics"; then
    log "exporter healthy on :${exporter_port}"
  else
    rc=1
  fi
  return "${rc}"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) log "usage: $0 install|start|stop|status"; exit 2 ;;
esac
