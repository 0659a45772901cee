#!/usr/bin/env bash
# `make demo`: the main job on a CPU machine, about 10 minutes on 2 cores with a cold artifact cache.
#   1. quality: bench the fast CPU variants on the trained digits model; the quality gate marks the ones that lose
#      image quality FAILED (they are never chosen as a default);
#   2. speed: bench torch-fp32 and the variants that passed on the study's celebahq-256 architecture (the study's
#      Table 1 + Figure 4, short: few steps and runs);
#   3. serve: `edgediff up --profile cpu` with the fastest variant that passed (Triton + gateway + exporter +
#      Prometheus when installed), a short Locust load test through the gateway (latency percentiles, images/s,
#      energy per image or "no power sensor"), and the same variant benched through the gateway;
#   4. `edgediff down`. Everything lands in reports/.
set -euo pipefail
cd "$(dirname "$0")/.."
E=.venv/bin/edgediff
PY=.venv/bin/python
OUT=${EDGEDIFF_DEMO_OUT:-reports}
MODEL=${EDGEDIFF_DEMO_MODEL:-celebahq-256}
STEPS=${EDGEDIFF_DEMO_STEPS:-10}
CANDIDATES=${EDGEDIFF_DEMO_CANDIDATES:-openvino-bf16-int8dec-dc3,openvino-bf16-dc3,openvino-int8,openvino-bf16,torch-bf16,onnx-fp32}
STATE="$OUT/stack-state"
mkdir -p "$OUT"

say() { printf '\n=== %s\n' "$*"; }
cleanup() { "$E" down --state-dir "$STATE" >/dev/null 2>&1 || true; }
trap cleanup EXIT

say "variants on this machine"
"$E" variants

say "1/4 quality gate on the trained digits model: torch-fp32 vs $CANDIDATES"
"$E" bench --model digits --variants "torch-fp32,$CANDIDATES" --steps 20 --runs 1 --warmup 1 --no-plots \
    --out "$OUT/quality"

PASSED=$("$PY" - "$OUT/quality/report.json" "$CANDIDATES" <<'EOF'
import json, sys
from edgediff.bench.select import gate_passed
passed = gate_passed(json.load(open(sys.argv[1])))
print(",".join(v for v in sys.argv[2].split(",") if v in passed))
EOF
)
say "passed the quality gate: ${PASSED:-none}"

say "2/4 speed on $MODEL ($STEPS steps): torch-fp32 vs ${PASSED:-nothing}"
"$E" bench --model "$MODEL" --variants "torch-fp32${PASSED:+,$PASSED}" --steps "$STEPS" --runs 2 --warmup 1 \
    --out "$OUT/bench"

SERVABLE=$("$PY" -c "from exporters.targets import get_target; print(','.join(get_target('cpu').placements))")
DEFAULT=$("$PY" -m edgediff.bench.select --speed "$OUT/bench/report.json" --quality "$OUT/quality/report.json" \
    --allowed "$SERVABLE")
say "default served variant (fastest on $MODEL that passed the gate and Triton's cpu target serves): $DEFAULT"

say "3/4 edgediff up --profile cpu --model $MODEL --variants $DEFAULT"
"$E" up --profile cpu --model "$MODEL" --variants "$DEFAULT" --state-dir "$STATE" --detach
"$E" status --state-dir "$STATE"

"$E" loadtest --smoke --target 127.0.0.1:50051 --steps "$STEPS" --duration 60s \
    --exporter http://127.0.0.1:9400/metrics --gateway-metrics http://127.0.0.1:9401/metrics \
    --out "$OUT/loadtest"

"$E" bench --model "$MODEL" --variants "$DEFAULT" --steps "$STEPS" --runs 2 --warmup 1 --no-plots \
    --through gateway 127.0.0.1:50051 --label served --out "$OUT/served"

say "4/4 edgediff down"
"$E" down --state-dir "$STATE"
trap - EXIT

say "done"
echo "quality gate (digits):        $OUT/quality/report.md"
echo "bench ($MODEL, in-process):   $OUT/bench/report.md  (samples: $OUT/bench/samples/)"
echo "served through the gateway:   $OUT/served/report.md"
echo "load test:                    $OUT/loadtest/loadtest.md"
