#!/usr/bin/env bash
# Create .venv at the repository root (when missing) and install the project with the given extras.
# Usage: scripts/bootstrap.sh EXTRAS   e.g. "worker" or "all"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-all}"
venv="$root/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "==> installing minigpt4-bot[$extras] into .venv (first time takes a few minutes)"
    # Some pip configurations list index folders that do not exist; their warnings are noise here.
    exec 3>&2 2> >(grep -v "is ignored: it is neither a file nor a directory" >&3)
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    case "$extras" in
        *worker*|*all*)
            # Pin torch/torchvision as a pair: timm needs torchvision, and a mismatched pair fails at import.
            "$venv/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
            ;;
    esac
    "$venv/bin/python" -m pip install --quiet -e "$root[$extras]"
    touch "$stamp"
fi
