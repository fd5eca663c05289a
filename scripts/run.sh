#!/usr/bin/env bash
# Builds (if needed) and runs the server; arguments go to gritserve.
# Without --model it serves a generated demo checkpoint with RANDOM weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >&2
exec "${BUILD_DIR:-build}/gritserve" "$@"
