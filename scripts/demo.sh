#!/usr/bin/env bash
# Build the environment if needed, then stream a synthetic video through the real node over
# DDS: writes out/demo_overlay.mp4 and prints a one-line summary. Extra arguments go to
# anymo-demo (see `bash scripts/demo.sh --help`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source scripts/env.sh
exec python -m anymo_ros.tools.demo "$@"
