#!/usr/bin/env bash
# The project's test command: system packages, services, weights and photos, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/services.sh
scripts/fetch-assets.sh
if [ -x scripts/lint-deploy.sh ]; then scripts/lint-deploy.sh; fi
cargo test --workspace --locked
# The graph the networks run as on a GPU (Candle's own ops, no Rollcall kernel), on the CPU:
# the same golden outputs and real-photo results.
ROLLCALL_CPU_KERNELS=0 cargo test --locked -p rollcall-models --test ssd_golden --test tiny_golden \
  --test landmarks_golden --test dlib_golden --test recognition_golden --test pipeline_real_photos
