#!/usr/bin/env bash
# Distributed-mode throughput and latency: three `levee node` processes on the real Kafka
# and Cassandra from scripts/services.sh, and `levee-load` sending through node-1.
#
#   scripts/services.sh up
#   bench/distributed.sh                      # default load: -c 8 -w 64 --duration 10
#   bench/distributed.sh -c 32 -w 16 --json   # any levee-load flags
#   scripts/services.sh down
#
# Each run uses a fresh keyspace-independent cluster name and Kafka topic, nodes listen on
# 127.0.0.1:4533..4535 (admin 9200..9202), and everything it started is stopped when it
# ends, however it ends. The per-account and per-prefix limits are lifted: the load
# generator's few accounts send far faster than a person could.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODES=3

cd "$ROOT"
"$ROOT/scripts/services.sh" status >/dev/null 2>&1 ||
    { echo "distributed.sh: the services are not up; run scripts/services.sh up first" >&2; exit 1; }
cargo build --release --locked -q -p levee -p levee-bench

# CPU seconds (user + system) a process has used so far.
cpu() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
SERVICES="${LEVEE_SERVICES_DIR:-$ROOT/target/services}"
declare -A SERVICE_CPU0
for s in kafka cassandra; do
    pid="$(cat "$SERVICES/$s.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] && SERVICE_CPU0[$s]="$(cpu "$pid")"
done

RUN="$(mktemp -d)"
STAMP="bench-$(date +%s%N)"
NODE_EXTRA=$'account_requests_per_sec = 1000000\nconnections_per_prefix_per_sec = 1000000'
# shellcheck source=../scripts/lib/nodes.sh
source "$ROOT/scripts/lib/nodes.sh"
trap nodes_stop EXIT
for k in $(seq "$NODES"); do
    node_start "$k"
done
# Each node prints its block and then a `cluster:` line once it has joined.
for k in $(seq "$NODES"); do
    node_wait "$k" "${NODE_PIDS[$((k - 1))]}" || { echo "distributed.sh: node-$k did not start" >&2; exit 1; }
done
FP="$(awk '/fingerprint:/ {print $2; exit}' "$RUN/node-1.out")"
# Let the roster settle on all three before measuring.
sleep 3

if [[ $# -eq 0 ]]; then set -- -c 8 -w 64 --duration 10; fi
TIMEFORMAT="levee-load CPU seconds: %U user + %S system in %R s"
time target/release/levee-load --server 127.0.0.1:4533 --fingerprint "$FP" "$@"
echo "node CPU seconds (user+system) since each started:" >&2
for k in $(seq "$NODES"); do
    echo "  node-$k: $(cpu "${NODE_PIDS[$((k - 1))]}")" >&2
done
echo "service CPU seconds since this script started:" >&2
for s in "${!SERVICE_CPU0[@]}"; do
    pid="$(cat "$SERVICES/$s.pid")"
    awk -v s="$s" -v a="$(cpu "$pid")" -v b="${SERVICE_CPU0[$s]}" 'BEGIN {printf "  %s: %.1f\n", s, a - b}' >&2
done
