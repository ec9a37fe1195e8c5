#!/usr/bin/env bash
# Regenerates the face-api golden fixtures in models/tests/fixtures/faceapi/ by running the
# original @vladmandic/face-api@1.7.15 (tfjs CPU backend, pure JS) on fixed inputs.
# Needs the assets: run scripts/fetch-assets.sh first. Needs Node.js >= 18 and npm.
#   bash scripts/golden/generate.sh            # everything
#   bash scripts/golden/generate.sh fixed      # only fixed.json
#   bash scripts/golden/generate.sh samples    # only sample1..6.json
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
model_dir=${ROLLCALL_MODEL_DIR:-${ROLLCALL_ASSETS_DIR:-$repo/assets}/face-api}
[ -f "$model_dir/model/face_recognition_model.bin" ] && [ -f "$model_dir/demo/sample1.jpg" ] \
  || { echo "generate: assets missing under $model_dir; run scripts/fetch-assets.sh first" >&2; exit 1; }
command -v node >/dev/null 2>&1 || { echo "generate: node is required" >&2; exit 1; }
cd "$here"
# npm ci (exact versions from the committed lock file) unless node_modules was already
# installed from this very lock file
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.rollcall-lock-sha256 2>/dev/null)" != "$lock_sum" ]; then
  npm ci --ignore-scripts --no-audit --no-fund
  echo "$lock_sum" > node_modules/.rollcall-lock-sha256
fi
exec node generate.mjs "$@"
