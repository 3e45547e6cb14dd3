#!/usr/bin/env bash
# Set up (first time) and run the bot with its own local model worker.
# Usage: ./scripts/run.sh [COMMAND]   (see: ./scripts/run.sh --help; default: run)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The bot plus the worker's model stack; a host that only runs the bot can use `pip install .` instead.
"$root/scripts/bootstrap.sh" "worker,queue" >&2
exec "$root/.venv/bin/python" -m bot "$@"
