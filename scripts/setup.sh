#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for hilserl without a ROS 2 distro:
# system libraries (apt, only when missing) + .venv with the ROS 2 Kilted wheels and the project.
# Idempotent: a stamp keyed on the dependency files makes a repeated run take well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HILSERL_VENV:-.venv}
PYTHON=${PYTHON:-python3}

stamp_key=$(cat requirements.txt setup.py scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.hilserl-setup-$stamp_key"
if [ -f "$stamp" ]; then
  exit 0
fi

# System libraries: OSMesa for headless MuJoCo rendering, GL/EGL loaders for mujoco's import.
need_apt=()
ldconfig -p | grep -q 'libOSMesa.so' || need_apt+=(libosmesa6)
ldconfig -p | grep -q 'libGL.so.1' || need_apt+=(libgl1)
ldconfig -p | grep -q 'libEGL.so.1' || need_apt+=(libegl1)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$pyver" in
  3.10|3.11|3.12|3.13) ;;
  *) echo "[setup] Python $pyver found; the ROS 2 Kilted wheels need 3.10-3.13 (set PYTHON=...)" >&2; exit 1;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with Python $pyver"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing Python dependencies into $VENV (first run: about a minute)"
# Some machines' pip config points at local mirrors that warn for every missing name: hide that noise only.
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
pip_install -r requirements.txt
# PEP 660 editable install always: pip falls back to the deprecated `setup.py develop` (which
# rejects setup.cfg's colcon script_dir) once `wheel` is in the venv (the launch tooling adds it).
pip_install --no-deps --use-pep517 -e .
# Fail loudly here rather than in the first test.
"$VENV/bin/python" -c 'import rclpy, sensor_msgs.msg, torch, mujoco, scservo_sdk, rosbags, cv2, yaml, pyarrow, av, huggingface_hub, hilserl, hilserl_tools'
rm -f "$VENV"/.hilserl-setup-*
touch "$stamp"
echo "[setup] done"
