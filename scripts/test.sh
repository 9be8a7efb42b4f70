#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: venv, Redis and PostgreSQL reachable, Chromium.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
setup_venv "cpu,test"
ensure_redis_server_binary  # the suite starts its own Redis instances on spare ports
ensure_postgres
ensure_postgres_binaries  # the chaos test kills and restarts a private PostgreSQL of its own
ensure_chromium
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p test-artifacts
exec "$VENV/bin/python" -m pytest "$@"
