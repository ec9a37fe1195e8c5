#!/usr/bin/env bash
# Builds the `cuda` feature on a machine without a GPU or a CUDA install, with NVIDIA's CUDA
# toolchain from PyPI, and packs what a GPU machine needs to check it into one folder:
#
#   scripts/cuda-build.sh   -> target/gpu-kit.tar.xz (about 57 MB), unpacking to gpu-kit/:
#     bin/cuda_numerics        the CUDA-vs-CPU numerics tests (rollcall-models)
#     bin/stages               the stage benches (ROLLCALL_DEVICE=cuda: the GPU's batches)
#     bin/rollcall             the server and `rollcall eval`, with the same features
#     gpu-check.sh             runs them on the GPU machine
#     assets/                  the weights and photos they read
#
# On the GPU machine: `tar xJf gpu-kit.tar.xz && bash gpu-kit/gpu-check.sh` (it finds the
# CUDA 13 user-space libraries of the machine's Python environment). The CPU build, the tests
# and CI never need any of this.
#
# ROLLCALL_CUDNN=1 builds `--features cudnn` instead (dense convolutions on cuDNN): the kit is
# then target/gpu-kit-cudnn.tar.xz, and the GPU machine must have cuDNN 9 for CUDA 13 (e.g. a
# Python env with the nvidia-cudnn-cu13 wheel, or PyTorch); it is not in the kit (about 1 GB).
#
# Environment: CUDA_COMPUTE_CAP (90: H100/H200; 89: L4; 80: A100), ROLLCALL_CUDA_VENV (where
# the wheels go, default ~/.cache/rollcall/cuda-venv), CARGO_TARGET_DIR (default
# ~/.cache/rollcall/target-cuda: the link flags below differ from the CPU build's, so it gets
# its own folder and the CPU build's cache stays warm).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${ROLLCALL_CUDA_VENV:-$HOME/.cache/rollcall/cuda-venv}
target=${CARGO_TARGET_DIR:-$HOME/.cache/rollcall/target-cuda}
features=cuda
kit_name=gpu-kit
if [ "${ROLLCALL_CUDNN:-0}" = 1 ]; then
  features=cudnn
  kit_name=gpu-kit-cudnn
fi
kit="$repo/target/$kit_name"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

# Pinned to CUDA 13.0, the version of the GPU machines' driver (580): a newer nvcc emits PTX
# that driver refuses.
wheels=(
  "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
  "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-cublas<13.1" "nvidia-curand==10.4.0.35"
  "nvidia-cuda-nvrtc<13.1"
)
[ "$features" = cudnn ] && wheels+=("nvidia-cudnn-cu13==9.13.0.50")
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.rollcall-wheels"
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${wheels[@]}"
  echo "${wheels[*]}" > "$stamp"
fi
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -x "$cu/bin/nvcc" ] || { echo "cuda-build: no nvcc under $cu" >&2; exit 1; }

# The wheels ship versioned libraries only and no libcuda (the driver's): unversioned links
# for the linker, and a stub libcuda.so.1 so the binaries record it as needed; the driver's
# copy resolves it on the GPU machine. The stub starts empty (enough for build scripts, which
# never call it) and, once cudarc is compiled, defines every driver function cudarc calls.
links="$target/cuda-link"
mkdir -p "$links"
libs=(cublas cublasLt cudart nvrtc curand)
[ "$features" = cudnn ] && libs+=(cudnn)
for lib in "${libs[@]}"; do
  file=
  for f in "$cu"/lib/lib"$lib".so.* "$cu"/../cudnn/lib/lib"$lib".so.*; do
    if [ -e "$f" ]; then file=$f; break; fi
  done
  [ -n "$file" ] || { echo "cuda-build: lib$lib missing from the wheels" >&2; exit 1; }
  ln -sf "$file" "$links/lib$lib.so"
done
stub() {
  { echo 'void rollcall_cuda_stub(void) {}'
    # (`if`, not `&&`: on a first build there is no rlib, and a failed test as the loop's
    # last command would fail the pipeline and, with `set -e`, the script.)
    for rlib in "$target"/debug/deps/libcudarc-*.rlib; do
      if [ -e "$rlib" ]; then nm --undefined-only "$rlib" 2>/dev/null; fi
    done | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print "void " $2 "(void) {}" }' | sort -u
  } > "$links/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$links/libcuda.so" "$links/stub.c"
  ln -sf libcuda.so "$links/libcuda.so.1"
}
stub

export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu"
export CARGO_TARGET_DIR="$target"
export RUSTFLAGS="-L $links -C link-arg=-Wl,--no-as-needed -C link-arg=-lcuda -C link-arg=-Wl,--unresolved-symbols=ignore-in-shared-libs"
# RUSTFLAGS also link the build scripts against the stub, which they then load (and never call).
export LD_LIBRARY_PATH="$links:$cu/lib:$cu/../cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$repo"
# The dev profile (dependencies and the models crate at opt-level 3) for all three, so they
# share one build of the dependencies. The library first: it compiles cudarc without linking
# a binary, so the stub can then be given cudarc's driver functions.
cargo build --locked -p rollcall-models --features "$features"
stub
echo "cuda-build: libcuda stub with $(grep -c '^void cu' "$links/stub.c") driver functions"
cargo build --locked -p rollcall-server --features "$features" --bin rollcall
cargo test --locked -p rollcall-models --features "$features" --test cuda_numerics --no-run
cargo bench --locked -p rollcall-benches --features "$features" --profile dev --bench stages --no-run

# The newest build of a test or bench binary (cargo names them NAME-HASH; NAME-HASH.d beside).
newest() {
  local f best=
  for f in "$target"/debug/deps/"$1"-*; do
    [[ $f == *.d ]] && continue
    if [ -z "$best" ] || [ "$f" -nt "$best" ]; then best=$f; fi
  done
  echo "$best"
}
rm -rf "$kit"
mkdir -p "$kit/bin" "$kit/assets/face-api/model"
strip --strip-all -o "$kit/bin/cuda_numerics" "$(newest cuda_numerics)"
strip --strip-all -o "$kit/bin/stages" "$(newest stages)"
strip --strip-all -o "$kit/bin/rollcall" "$target/debug/rollcall"
cp "$repo/scripts/gpu-check.sh" "$kit/gpu-check.sh"
assets=${ROLLCALL_ASSETS_DIR:-$repo/assets}
# Only what the checks read: the four networks' weights, dlib's ResNet, the photos.
for m in ssd_mobilenetv1_model tiny_face_detector_model face_landmark_68_model face_recognition_model; do
  cp "$assets"/face-api/model/$m* "$kit/assets/face-api/model/"
done
cp -r "$assets/face-api/demo" "$kit/assets/face-api/demo"
cp -r "$assets/dlib" "$kit/assets/"
mkdir -p "$kit/assets/face_recognition/test_images"
cp "$assets"/face_recognition/test_images/{obama,biden}*.jpg "$kit/assets/face_recognition/test_images/"
tar -C "$repo/target" -cf - "$kit_name" | xz -T0 -6 > "$repo/target/$kit_name.tar.xz"
du -sh "$kit"/bin/* "$kit/assets" "$repo/target/$kit_name.tar.xz"
