#!/usr/bin/env bash
# Runs on a GPU machine from the kit `scripts/cuda-build.sh` packs (copied into it as
# gpu-check.sh): the CUDA-vs-CPU numerics tests, then the stage benches on the GPU (embedding
# faces/s at batch 64 and 256, detection frames/s), then, where the kit has `bin/rollcall`,
# `rollcall eval` on the GPU and on the CPU over the same photos. Writes everything to stdout
# and, when $OUT is set, to $OUT/.
#
#   bash gpu-kit/gpu-check.sh                        # every part
#   GPU_CHECK=numerics bash gpu-kit/gpu-check.sh     # one part: numerics | stages | eval
#
# Needs the NVIDIA driver's libcuda and the CUDA 13 user-space libraries (cuBLAS, cuRAND,
# NVRTC, cudart); they are looked up in LD_LIBRARY_PATH, then in every Python environment's
# site-packages/nvidia/*/lib.
set -uo pipefail

kit=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$kit/out}
mkdir -p "$out"
parts=${GPU_CHECK:-numerics stages eval}
[ -e "$kit/assets/face_recognition/test_images/obama.jpg" ] || {
  echo "gpu-check: run from an unpacked kit (scripts/cuda-build.sh makes it)" >&2; exit 2; }

if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13' &&
  ! printf '%s' "${LD_LIBRARY_PATH:-}" | grep -q nvidia; then
  libs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
  )
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export ROLLCALL_ASSETS_DIR="$kit/assets" ROLLCALL_MODEL_DIR="$kit/assets/face-api"
export ROLLCALL_DEVICE=${ROLLCALL_DEVICE:-cuda:0}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

status=0
for part in $parts; do
  echo "== $part"
  case $part in
    numerics)
      "$kit/bin/cuda_numerics" --test-threads 1 --nocapture 2>&1 | tee "$out/numerics.txt"
      status=$((status | PIPESTATUS[0]))
      ;;
    stages)
      # Criterion's own summary lines: time per batch and elements (frames or faces) per second.
      # Criterion keeps its reports under ./target: a scratch folder, not $OUT.
      (cd "$(mktemp -d)" && "$kit/bin/stages" --bench --warm-up-time 1 --measurement-time 3 \
        'detect_640x480|per_face/(landmarks|embed)|pipeline' 2>&1) | tee "$out/stages.txt" |
        awk '/^[a-z_0-9]+\/[a-z0-9_]+\/[0-9]+/ {name=$1} /time:/ && !/%/ {t=$(NF-3) " " $(NF-2)}
             /thrpt:/ && !/%/ {print name, t, $(NF-3), $(NF-2)}'
      status=$((status | PIPESTATUS[0]))
      ;;
    eval)
      if [ ! -x "$kit/bin/rollcall" ]; then
        echo "no bin/rollcall in the kit: skipped"
        continue
      fi
      folder="$(mktemp -d)/eval-photos"
      rm -rf "$folder" && mkdir -p "$folder/obama" "$folder/biden" "$folder/_unknown"
      cp "$kit"/assets/face_recognition/test_images/obama*.jpg "$folder/obama/"
      cp "$kit/assets/face_recognition/test_images/biden.jpg" "$folder/biden/"
      cp "$kit"/assets/face-api/demo/sample*.jpg "$folder/_unknown/"
      for device in "$ROLLCALL_DEVICE" cpu; do
        for detector in ssd tiny; do
          echo "-- rollcall eval --device $device --detector $detector"
          "$kit/bin/rollcall" --device "$device" --model-dir "$ROLLCALL_MODEL_DIR" \
            eval --detector "$detector" "$folder" | tee "$out/eval-$device-$detector.txt" |
            grep -i 'images/s\|accuracy'
          status=$((status | PIPESTATUS[0]))
        done
      done
      ;;
    *) echo "unknown part $part (numerics | stages | eval)" >&2; status=2 ;;
  esac
done
exit "$status"
