# shellcheck shell=bash
# Shared setup for scripts/run and scripts/test. Sourced, not run.
# Everything is idempotent: a second run reuses .venv and the built models.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export WT_DATA_DIR="${WT_DATA_DIR:-$ROOT/data}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Install Debian packages for the commands that are missing.
ensure_commands() {  # pairs: command package
    local missing=()
    while [ $# -gt 1 ]; do
        command -v "$1" >/dev/null 2>&1 || missing+=("$2")
        shift 2
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} with apt"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Create .venv and install the package with the given extras, once per setup.cfg version.
ensure_venv() {  # extras, e.g. "test,base"
    local extras="$1"
    local python="${PYTHON:-python3}"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "Python 3.11 or newer is required" >&2; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$python" -m venv "$VENV"
    fi
    local digest stamp
    digest="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
    stamp="$VENV/.installed-$digest-${extras//,/_}"
    if [ ! -f "$stamp" ]; then
        say "installing whisper-transcriber[$extras] into .venv"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e "${ROOT}[${extras}]"
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}

# Build a model offline unless it is already there.
ensure_model() {  # name
    "$VENV/bin/whisper-transcriber" models install "$1" >/dev/null
}
