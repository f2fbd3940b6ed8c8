#!/usr/bin/env bash
# Run one client example against a throwaway server: `examples/run-example.sh node|python`.
#
# Migrates a fresh SQLite database in a temporary folder, starts `loyalty serve` on a free
# port, waits until health reports SERVING, runs the example and stops the server. Exits with
# the example's exit code (non-zero if the server does not come up). Needs .venv (`make venv`);
# the Node example also needs node and npm (`npm ci` installs from package-lock.json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
EXAMPLE_TIMEOUT_S=${EXAMPLE_TIMEOUT_S:-90}

which=${1:-}
case "$which" in
  node | python) ;;
  *) echo "usage: $0 node|python" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

export LOYALTY_DATABASE_URL="sqlite+aiosqlite:///$tmp/ledger.db"
export LOYALTY_HOST=127.0.0.1 LOYALTY_PORT=0 LOYALTY_METRICS_PORT=0
# The throwaway server's admin key, and the key the example sends (every call needs one).
export LOYALTY_ADMIN_KEY="example-$(date +%s)-$RANDOM$RANDOM"
export LOYALTY_API_KEY="$LOYALTY_ADMIN_KEY"

if [ "$which" = node ]; then
  # Install exactly what package-lock.json pins, unless that is what node_modules holds already.
  if [ ! -f examples/node/node_modules/.package-lock.json ] \
    || [ examples/node/package-lock.json -nt examples/node/node_modules/.package-lock.json ]; then
    (cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

"$VENV_BIN/loyalty" migrate >/dev/null
"$VENV_BIN/loyalty" serve >"$tmp/server.log" 2>&1 &
server_pid=$!

show_log() { echo "--- server log" >&2; tail -n 40 "$tmp/server.log" >&2; }

# The server prints "loyalty ledger listening on HOST:PORT" once it is bound.
address=""
for _ in $(seq 300); do
  address=$(sed -n 's/^loyalty ledger listening on \(.*\)$/\1/p' "$tmp/server.log")
  [ -n "$address" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$address" ]; then
  echo "FAILED: the server did not start" >&2; show_log; exit 1
fi

if ! "$VENV_BIN/python" - "$address" <<'EOF'
import sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(100):
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
        time.sleep(0.1)
sys.exit("the server did not report SERVING")
EOF
then
  show_log; exit 1
fi

echo "== $which example against $address"
rc=0
if [ "$which" = node ]; then
  timeout "$EXAMPLE_TIMEOUT_S" node examples/node/client.js "$address" || rc=$?
else
  timeout "$EXAMPLE_TIMEOUT_S" "$VENV_BIN/python" examples/python/client.py "$address" || rc=$?
fi
if [ "$rc" -ne 0 ]; then
  echo "FAILED: the $which example exited with code $rc" >&2
  show_log
fi
exit "$rc"
