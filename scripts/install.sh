#!/usr/bin/env bash
# Installs what argus needs on a fresh Debian/Ubuntu machine, idempotently:
#   1. system packages with apt-get (for the dev extra: redis-server and prometheus, which the
#      tests run for real);
#   2. a project virtual environment in .venv with the requested extras.
# Usage: scripts/install.sh [EXTRAS [APT_PACKAGE...]]   EXTRAS defaults to "dev" (everything the
# tests need); further Debian packages are installed when their command is missing (wrk for the
# load benchmark, say).
# The Dockerfile runs this same script, so the image installs exactly what the tests exercise.
set -euo pipefail
extras="${1:-dev}"
shift || true
cd "$(dirname "$0")/.."

# The tests (the dev extra) run a real redis-server and Prometheus (with promtool); the images
# (serve, train extras) need no system package.
system=("$@")
[[ ",$extras," == *",dev,"* ]] && system+=(redis-server prometheus curl)
apt_packages=()
for package in "${system[@]}"; do
    command -v "$package" >/dev/null 2>&1 || apt_packages+=("$package")
done
if ((${#apt_packages[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> apt-get install ${apt_packages[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip_args=(--quiet)
# Machines of this project carry the CPU torch wheel on disk; use it instead of a CUDA download.
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)
echo "==> pip install -e '.[${extras}]' into .venv"
.venv/bin/pip install "${pip_args[@]}" -e ".[${extras}]"
