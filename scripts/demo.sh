#!/usr/bin/env bash
# `make demo`: the main job on a CPU machine.
#   0. the variants this machine can run (and why not the others);
#   1. a first fast image: this machine's profile when `edgediff tune` has written one, else the first available of
#      FIRST_CANDIDATES (OpenVINO bf16 where bf16 is native, else fp32: nothing to calibrate, one UNet export) with
#      UniPC at 8 steps (passed the digits gate against torch-fp32 DDIM-20; DeepCache rows only pass with DDIM-20,
#      so the first image uses none); its exports are the whole of a cold start;
#   2. `edgediff tune`: samplers and candidates gated on the trained digits model (a FAILED row is never chosen),
#      then torch-fp32 DDIM-20 vs each candidate's cheapest passing row on the study's celebahq-256 architecture in
#      one bench run; the fastest passing row becomes this machine's profile;
#   3. serve: `edgediff up --profile cpu` with the profile's variant (the gateway serves its scheduler and steps by
#      default), a short Locust load test through the gateway and the same variant benched through it;
#   4. `edgediff down`. Everything lands in reports/.
# The candidates below are filtered by the registry's availability probes (a CPU without native bf16 drops the bf16
# ones); override with EDGEDIFF_DEMO_CANDIDATES. Candidates whose int8 UNet needs a long calibration are left to
# `edgediff tune` run by hand (it tries every available variant by default).
set -euo pipefail
cd "$(dirname "$0")/.."
E=.venv/bin/edgediff
PY=.venv/bin/python
OUT=${EDGEDIFF_DEMO_OUT:-reports}
MODEL=${EDGEDIFF_DEMO_MODEL:-celebahq-256}
CANDIDATES=${EDGEDIFF_DEMO_CANDIDATES:-openvino-bf16-int8dec-dc3,openvino-bf16-dc3,openvino-bf16-int8dec,openvino-int8,openvino-fp32-int8dec,openvino-fp32}
FIRST_CANDIDATES=${EDGEDIFF_DEMO_FIRST:-openvino-bf16,openvino-fp32}
RUNS=${EDGEDIFF_DEMO_RUNS:-2}
STATE="$OUT/stack-state"
START=$(date +%s)
mkdir -p "$OUT"

say() { printf '\n=== [%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
cleanup() { "$E" down --state-dir "$STATE" >/dev/null 2>&1 || true; }
trap cleanup EXIT

say "variants on this machine"
"$E" variants

available() {
  "$PY" - "$1" <<'EOF'
import sys
from edgediff.variants import get_variant
print(",".join(v for v in sys.argv[1].split(",") if v and get_variant(v).availability().ok))
EOF
}
AVAILABLE=$(available "$CANDIDATES")
[ -n "$AVAILABLE" ] || { echo "none of $CANDIDATES can run here (see 'edgediff variants')" >&2; exit 2; }
# "variant scheduler steps" of this machine's saved profile of $MODEL, or an empty line (and why, on stderr) when
# there is none (a profile from another machine is refused).
profile_choice() {
  "$PY" - "$MODEL" <<'EOF'
import sys
from edgediff.bench.tune import ProfileError, load_profile
try:
    choice = load_profile(sys.argv[1])["choice"]
    print(choice["variant"], choice["scheduler"], choice["steps"])
except ProfileError as exc:
    print(f"no profile of this machine ({exc})", file=sys.stderr)
    print()
EOF
}
# The first image: the saved profile of this machine, else the cheapest-to-build gate-passing choice.
FIRST="" FIRST_SCHEDULER="" FIRST_STEPS=""
read -r FIRST FIRST_SCHEDULER FIRST_STEPS < <(profile_choice) || true
if [ -z "$FIRST" ]; then
  FIRST=$(available "$FIRST_CANDIDATES"); FIRST=${FIRST%%,*}
  FIRST_SCHEDULER=unipc FIRST_STEPS=8
fi
[ -n "$FIRST" ] || { echo "none of $FIRST_CANDIDATES can run here (see 'edgediff variants')" >&2; exit 2; }

say "1/4 first fast image: $FIRST, $FIRST_SCHEDULER $FIRST_STEPS steps, on $MODEL (exports on first use)"
"$E" generate --model "$MODEL" --variant "$FIRST" --scheduler "$FIRST_SCHEDULER" --steps "$FIRST_STEPS" \
    --out "$OUT/first-image.png"
say "first fast image written: $OUT/first-image.png"

say "2/4 edgediff tune: candidates $AVAILABLE (quality gate on digits, speed on $MODEL vs torch-fp32 DDIM-20)"
"$E" tune --model "$MODEL" --variants "$AVAILABLE" --runs "$RUNS" --warmup 1 --out "$OUT/tune"
DEFAULT="" SCHEDULER="" STEPS=""
read -r DEFAULT SCHEDULER STEPS < <(profile_choice) || true
[ -n "$DEFAULT" ] || { echo "edgediff tune wrote no usable profile of $MODEL" >&2; exit 1; }
say "this machine's profile: $DEFAULT, $SCHEDULER $STEPS steps (edgediff tune --show)"

say "3/4 edgediff up --profile cpu --model $MODEL (variant from the profile)"
"$E" up --profile cpu --model "$MODEL" --state-dir "$STATE" --detach
"$E" status --state-dir "$STATE"

"$E" loadtest --smoke --target 127.0.0.1:50051 --steps "$STEPS" --duration 60s \
    --exporter http://127.0.0.1:9400/metrics --gateway-metrics http://127.0.0.1:9401/metrics \
    --out "$OUT/loadtest"

"$E" bench --model "$MODEL" --variants "$DEFAULT" --scheduler "$SCHEDULER" --steps "$STEPS" --runs 2 --warmup 1 \
    --no-plots --through gateway 127.0.0.1:50051 --label served --out "$OUT/served"

say "4/4 edgediff down"
"$E" down --state-dir "$STATE"
trap - EXIT

say "done"
echo "first fast image:             $OUT/first-image.png"
echo "quality gate (digits):        $OUT/tune/quality/report.md (samplers: $OUT/tune/samplers/report.md)"
echo "speed ($MODEL, in-process):   $OUT/tune/speed/report.md"
echo "served through the gateway:   $OUT/served/report.md"
echo "load test:                    $OUT/loadtest/loadtest.md"
