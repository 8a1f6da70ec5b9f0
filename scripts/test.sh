#!/usr/bin/env bash
# Build the environment (scripts/setup_env.sh, quick when nothing changed), then run the whole
# pytest suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ros -x`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source scripts/env.sh

status=0
python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    # pytest's "no tests collected" must not pass as success.
    echo "scripts/test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
