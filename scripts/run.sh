#!/usr/bin/env bash
# Runs Rollcall on this machine: fetches the weights once, builds, serves on 127.0.0.1:8080
# with SQLite under ./data, photos under ./data/photos. Extra arguments go to `rollcall serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/fetch-assets.sh
exec cargo run --release --locked -p rollcall-server --bin rollcall -- serve "$@"
