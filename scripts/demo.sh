#!/usr/bin/env bash
# The main job on this machine (filled in as the bench, serving and load-test pieces land).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p reports
.venv/bin/edgediff variants
.venv/bin/edgediff generate --model celebahq-256 --steps 2 --out reports/sample.png
