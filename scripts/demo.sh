#!/usr/bin/env bash
# The main job on this machine (filled in as the bench, serving and load-test pieces land).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p reports
.venv/bin/edgediff variants
.venv/bin/edgediff generate --model celebahq-256 --steps 2 --out reports/sample.png

# The study's evaluation (Table 1 + Figure 4) on this CPU: the celebahq-256 architecture over the CPU variants, each
# in its own process. Few steps and runs so the demo stays within ~10 minutes on 2 cores (about 4 minutes measured,
# a cold int8 quantization included; see benchmarks/RESULTS.md). Prints the table and where the report lives.
BENCH_VARIANTS="torch-fp32,torch-bf16,jit-fp32,onnx-fp32,openvino-fp32,openvino-bf16,openvino-int8"
.venv/bin/edgediff bench --model celebahq-256 --variants "$BENCH_VARIANTS" --steps 4 --runs 3 --warmup 1 \
    --out reports/bench
