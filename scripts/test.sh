#!/usr/bin/env bash
# Set up (first time) and run the whole test suite: lint, then pytest.
# Usage: ./scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/bootstrap.sh" all

# The scale-out tests start a real redis-server; install it from the OS packages when missing.
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing redis-server"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "!! redis-server not found: install it (e.g. apt-get install redis-server) for the scale-out tests" >&2
    fi
fi

echo "==> ruff"
"$root/.venv/bin/ruff" check bot model_worker tests benchmarks
echo "==> pytest"
set +e
"$root/.venv/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "!! pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$status"
