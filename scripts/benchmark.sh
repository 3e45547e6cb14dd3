#!/usr/bin/env bash
# Set up (first time) and run the throughput benchmark: the worker against the card's reference loop.
# Usage: ./scripts/benchmark.sh [--conversations 8 --turns 3 --max-new-tokens 32 ...]  (see --help)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/bootstrap.sh" all >&2
exec "$root/.venv/bin/python" -m benchmarks.throughput "$@"
