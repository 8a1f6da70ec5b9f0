# Source this file (bash): `source scripts/env.sh`. It activates the environment that
# scripts/setup_env.sh built: the .venv, the ROS 2 wheels in it, and the colcon workspace
# with the anymo_ros messages, node and launch files.

_anymo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -f "$_anymo_root/.venv/bin/activate" ] || [ ! -f "$_anymo_root/.colcon/install/local_setup.sh" ]; then
    echo "scripts/env.sh: environment not built; run: bash scripts/setup_env.sh" >&2
    unset _anymo_root
    return 1
fi

# The activate and colcon scripts read unset variables; tolerate that under `set -u`.
case $- in *u*) _anymo_nounset=1; set +u ;; *) _anymo_nounset= ;; esac

# shellcheck disable=SC1091
source "$_anymo_root/.venv/bin/activate"
# The ROS 2 wheels install into the venv prefix; ament_index_python finds packages through this.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV"
# Adds the workspace: anymo_ros messages (PYTHONPATH), executables and share/ (AMENT_PREFIX_PATH).
# shellcheck disable=SC1091
source "$_anymo_root/.colcon/install/local_setup.sh"
# Sources ahead of the install tree, which holds one link per file as of the last build: modules
# added since then import without a rebuild; anymo_ros.msg still comes from the install tree
# (anymo_ros/__init__.py joins both directories).
export PYTHONPATH="$_anymo_root:$PYTHONPATH"
# colcon logs of any verb (build, list, ...) go with the workspace, not into the current directory.
export COLCON_LOG_PATH="$_anymo_root/.colcon/log"
# Keep DDS discovery on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Camera-size images with best-effort QoS between processes (see the file's comment).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_anymo_root/config/fastdds_large_images.xml}"

[ -n "$_anymo_nounset" ] && set -u
unset _anymo_root _anymo_nounset
