#!/usr/bin/env bash
# Regenerates the dlib golden fixtures in models/tests/fixtures/dlib/ with dlib's own Python
# bindings (fixtures only; dlib is never used at runtime). Needs the assets (run
# scripts/fetch-assets.sh first), Python 3 with venv, a C++ compiler. dlib==20.0.1 is compiled
# from its PyPI source distribution into a throwaway venv (about 15 minutes on 2 cores);
# an existing venv is reused.
#   DLIB_VENV=/tmp/dlibvenv bash scripts/golden/dlib_fixtures.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${DLIB_VENV:-${TMPDIR:-/tmp}/rollcall-dlib-venv}
DLIB_SPEC="dlib==20.0.1"
if ! "$venv/bin/python" -c 'import dlib, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cmake setuptools wheel numpy
  # dlib's setup.py calls `cmake` from PATH; only dlib itself is built from source.
  PATH="$venv/bin:$PATH" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$venv/bin/pip" install --no-build-isolation --no-binary dlib "$DLIB_SPEC"
fi
exec "$venv/bin/python" "$here/dlib_fixtures.py" "$@"
