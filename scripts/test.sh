#!/usr/bin/env bash
# The project's test command: system packages, services, weights and photos, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/services.sh
scripts/fetch-assets.sh
if [ -x scripts/lint-deploy.sh ]; then scripts/lint-deploy.sh; fi
cargo test --workspace --locked
