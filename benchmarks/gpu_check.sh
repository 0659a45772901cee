#!/usr/bin/env bash
# Every GPU check and benchmark of edgediff in one go, on a machine with CUDA and no network.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR: $OUT when set, else reports/gpu-check (git-ignored)
#
# Steps, in priority order, each under `timeout` inside one overall budget (GPU_CHECK_BUDGET_S, default 450 s, so
# the whole check ends well inside 10 minutes; a step that would not fit is skipped with that reason):
#   1. env           the GPU, driver, NVML energy counter, packages, tritonserver (env.json)
#   2. tiny          torch-fp32, torch-fp16, jit-fp32, jit-fp16, onnx-fp32, onnx-fp16 (ONNX Runtime's CUDA provider,
#                    I/O binding), trt-fp16 (plus a batch of 9, above its profile) end to end on `tiny`, latents vs
#                    torch-fp32 within each variant's tolerance (variants_tiny.jsonl); a variant this machine cannot
#                    run is skipped with the registry's reason (trt-fp16: no tensorrt; onnx-fp16: no onnxruntime-gpu)
#   3. pytest-gpu    `pytest -m "gpu and not slow"` over the test files that have gpu tests (in the log)
#   4. bench         `edgediff bench` on celebahq-256, 20 DDIM steps, NVML energy gross and net of a 5 s idle
#                    baseline: torch-fp32, torch-fp16, jit-fp16, onnx-fp16, trt-fp16 (bench.md, bench.json)
#   5. bench-compile the same for torch.compile, on its own: inductor compiles for a minute or two, and a timeout
#                    there cannot take the main bench down with it (bench_compile.md, bench_compile.json)
#   6. tiny-compile  torch.compile end to end on `tiny` (variants_tiny.jsonl)
#   7. triton        the rtx target's torch-fp32 baseline served by tritonserver on the GPU (Python-backend models on
#                    a KIND_GPU instance), images vs in-process: only where a tritonserver exists (PATH or pytriton)
#
# Installs nothing from the network. edgediff needs diffusers; where the image lacks it, carry the wheel in .whl/
# (benchmarks/gpu_wheels.sh fetches it on a machine with PyPI) and this script installs every .whl/*.whl with
# `pip --no-index --no-deps` into a temporary folder. Everything is written under OUT_DIR (at most 8 files):
# gpu_check.log, summary.json, env.json, variants_tiny.jsonl, bench.md, bench.json, bench_compile.md,
# bench_compile.json. Exit status: 0 when no step failed or timed out, 1 otherwise, 2 when no CUDA device is seen.
#
# Settings: PYTHON (python3), GPU_CHECK_BUDGET_S (450), GPU_CHECK_BENCH_MODEL (celebahq-256), GPU_CHECK_BENCH_STEPS
# (20), GPU_CHECK_BENCH_RUNS (6), GPU_CHECK_WHEELS (.whl), GPU_CHECK_STEPS (a comma list of the steps to run, for
# a rerun; default all), GPU_CHECK_ALLOW_CPU=1 (run the steps without CUDA: to
# try the script itself on a CPU machine; nothing it measures there is a GPU number).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-${1:-$REPO/reports/gpu-check}}"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
BENCH_MODEL="${GPU_CHECK_BENCH_MODEL:-celebahq-256}"
BENCH_STEPS="${GPU_CHECK_BENCH_STEPS:-20}"
BENCH_RUNS="${GPU_CHECK_BENCH_RUNS:-6}"  # 6: the fewest the bench's stability check accepts
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
ALLOW_CPU="${GPU_CHECK_ALLOW_CPU:-0}"
ONLY="${GPU_CHECK_STEPS:-}"  # e.g. bench,triton: only these steps (env always runs)
RESERVE_S=15     # kept back for the summary
MIN_STEP_S=20    # a step with less time than this left is skipped, not started

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgediff-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT_DIR/gpu_check.log"
STEPS="$WORK/steps.tsv"
export GPU_CHECK_NOTE="$WORK/note"  # a step's command may write its one-line result here
: >"$LOG"
: >"$STEPS"
START=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }

record() {  # record STEP STATUS SECONDS NOTE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >>"$STEPS"
    say "--- $1: $2 (${3}s) $4"
}

seconds_left() { echo $((BUDGET_S - ($(date +%s) - START) - RESERVE_S)); }

# step NAME CAP_S CMD...: run CMD under timeout min(CAP_S, what the budget has left); output to the log.
# Exit 0 -> ok, 3 -> skipped (the command says why), 124/137 -> timeout, anything else -> failed.
step() {
    local name=$1 cap=$2
    shift 2
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 0
    fi
    local left
    left=$(seconds_left)
    if ((left < MIN_STEP_S)); then
        record "$name" skipped 0 "not started: ${left}s left of the ${BUDGET_S}s budget"
        return 0
    fi
    local limit=$((cap < left ? cap : left))
    say "=== $name (timeout ${limit}s) $(date -u +%H:%M:%SZ): $*"
    local t0 rc status note
    t0=$(date +%s)
    rm -f "$GPU_CHECK_NOTE"
    local offset
    offset=$(stat -c %s "$LOG")
    # the signal goes to the command's whole process group (bench workers, tritonserver, pytest's children)
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    tail -c +$((offset + 1)) "$LOG" >"$WORK/step.out"
    case $rc in
        0) status=ok ;;
        3) status=skipped ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    note="exit $rc: $(grep -v '^[[:space:]]*$' "$WORK/step.out" | tail -n 1 | head -c 200)"  # pytest: its tally
    [ -s "$GPU_CHECK_NOTE" ] && note="$(head -c 600 "$GPU_CHECK_NOTE" | tr '\n' ' ')"
    record "$name" "$status" $(($(date +%s) - t0)) "$note"
    return 0
}

cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1
export EDGEDIFF_CACHE_DIR="$WORK/cache" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" MPLCONFIGDIR="$WORK/mpl"

# 0. wheels carried beside the tree (never fetched here)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "=== installing $(ls "$WHEELS"/*.whl | wc -l) carried wheel(s) from $WHEELS (no index, no dependencies)"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
        "$WHEELS"/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:$WORK/site"  # --no-deps: only the carried packages themselves land there
    else
        say "WARNING: installing the carried wheels failed (see above); going on with what the image has"
    fi
fi

# 1. environment
t0=$(date +%s)
{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv 2>&1 || true
    echo "cpu flags: $(grep -o -E 'avx512_bf16|avx512f|avx512_vnni|avx_vnni|avx2|fma' /proc/cpuinfo | sort -u | xargs)"
} >>"$LOG" 2>&1
"$PY" benchmarks/gpu_check.py env --out "$OUT_DIR/env.json" >>"$LOG" 2>&1
env_ok=$?
read -r CUDA MISSING < <("$PY" - "$OUT_DIR/env.json" <<'EOF' 2>/dev/null || echo "False ?"
import json, sys
env = json.load(open(sys.argv[1]))
print(env.get("cuda_available", False), ",".join(env.get("missing_required", [])) or "-")
EOF
)
record env "$([ $env_ok = 0 ] && echo ok || echo failed)" $(($(date +%s) - t0)) \
    "cuda=$CUDA missing=$MISSING ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"

finish() {
    "$PY" benchmarks/gpu_check.py summary "$STEPS" --env "$OUT_DIR/env.json" --out "$OUT_DIR/summary.json" \
        | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "gpu_check: $(($(date +%s) - START)) s in all; results in $OUT_DIR"
    exit "${1:-$rc}"
}

if [ "$CUDA" != "True" ] && [ "$ALLOW_CPU" != 1 ]; then
    record gpu skipped 0 "no CUDA device seen by torch: nothing to measure (GPU_CHECK_ALLOW_CPU=1 runs the steps anyway)"
    finish 2
fi
if [ "$MISSING" != "-" ]; then
    record edgediff failed 0 "cannot import $MISSING: carry the wheels in .whl/ (benchmarks/gpu_wheels.sh)"
    finish 1
fi

# 2. every GPU-capable variant end to end on tiny, in one process (torch.compile in step 6: it compiles a while)
TINY=torch-fp32,torch-fp16,jit-fp32,jit-fp16,onnx-fp32,onnx-fp16,trt-fp16
step tiny 150 "$PY" benchmarks/gpu_check.py variants "$TINY" --model tiny --out "$OUT_DIR/variants_tiny.jsonl"

# 3. the gpu-marked tests (the Triton one is slow: step 6)
mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' -E 'mark\.gpu|marks=pytest\.mark\.gpu' tests | sort)
step pytest-gpu 150 "$PY" -m pytest -m "gpu and not slow" -p no:cacheprovider -q -rs --continue-on-collection-errors \
    "${GPU_TESTS[@]}"

# 4./5. the study's evaluation on celebahq-256 with NVML energy (gross and net of the idle baseline)
LABEL="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
for run in "bench torch-fp32,torch-fp16,jit-fp16,onnx-fp16,trt-fp16 240" "bench_compile compile 180"; do
    read -r name variants cap <<<"$run"
    step "${name//_/-}" "$cap" "$PY" -m cli bench --model "$BENCH_MODEL" --steps "$BENCH_STEPS" --variants "$variants" \
        --runs "$BENCH_RUNS" --warmup 2 --idle-s 5 --no-plots --out "$WORK/$name" ${LABEL:+--label "$LABEL"}
    cp "$WORK/$name/report.md" "$OUT_DIR/$name.md" 2>/dev/null
    cp "$WORK/$name/report.json" "$OUT_DIR/$name.json" 2>/dev/null
done

# 6. torch.compile end to end on tiny
step tiny-compile 120 "$PY" benchmarks/gpu_check.py variants compile --model tiny --out "$OUT_DIR/variants_tiny.jsonl"

# 7. Triton on the GPU, where a tritonserver exists
if [ -n "$ONLY" ] && [[ ",$ONLY," != *",triton,"* ]]; then
    :
elif "$PY" benchmarks/gpu_check.py tritonserver >>"$LOG" 2>&1; then
    step triton 120 "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs tests/exporters/test_gpu_targets.py -k triton
else
    record triton skipped 0 "no tritonserver here: none on PATH and no nvidia-pytriton bundle (not in the image)"
fi

finish
