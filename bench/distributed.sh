#!/usr/bin/env bash
# Distributed-mode throughput and latency: three `levee node` processes on the real Kafka
# and Cassandra from scripts/services.sh, and `levee-load` sending through node-1.
#
#   scripts/services.sh up
#   bench/distributed.sh                      # default load: -c 8 -w 64 --duration 10
#   bench/distributed.sh -c 32 -w 16 --json   # any levee-load flags
#   LEVEE_BIN=/tmp/levee-other bench/distributed.sh   # the nodes run another build
#   scripts/services.sh down
#
# Besides levee-load's report it prints the CPU each process used over the load run, the
# whole system's envelopes per CPU-second, and the CQL statements the nodes ran per
# envelope stored, by statement (levee_store_statements_total from their metrics pages).
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
# The whole system's CPU over the load run: the three nodes, Kafka, Cassandra and the load
# tool, so that envelopes per CPU-second mean something on a shared machine.
system_cpu() {
    local total=0 pid
    for pid in "${NODE_PIDS[@]}" $(cat "$SERVICES"/kafka.pid "$SERVICES"/cassandra.pid 2>/dev/null); do
        total="$(awk -v t="$total" -v c="$(cpu "$pid")" 'BEGIN {print t + c}')"
    done
    echo "$total"
}
declare -A NODE_CPU0
for k in $(seq "$NODES"); do NODE_CPU0[$k]="$(cpu "${NODE_PIDS[$((k - 1))]}")"; done
for s in "${!SERVICE_CPU0[@]}"; do SERVICE_CPU0[$s]="$(cpu "$(cat "$SERVICES/$s.pid")")"; done
# The three nodes' metrics pages, one after another.
scrape() { for k in $(seq "$NODES"); do curl -sf "http://127.0.0.1:$((9199 + k))/metrics" || true; done; }
scrape > "$RUN/metrics.0"
CPU0="$(system_cpu)"
T0="$(date +%s.%N)"
OUT="$RUN/load.out"
TIMEFORMAT="levee-load CPU seconds: %U user + %S system in %R s"
{ time target/release/levee-load --server 127.0.0.1:4533 --fingerprint "$FP" "$@" | tee "$OUT"; } 2> "$RUN/load.time"
cat "$RUN/load.time" >&2
T1="$(date +%s.%N)"
CPU1="$(system_cpu)"
scrape > "$RUN/metrics.1"
echo "CPU seconds (user+system) over the load run:" >&2
for k in $(seq "$NODES"); do
    awk -v k="$k" -v a="$(cpu "${NODE_PIDS[$((k - 1))]}")" -v b="${NODE_CPU0[$k]}" 'BEGIN {printf "  node-%s: %.1f\n", k, a - b}' >&2
done
for s in "${!SERVICE_CPU0[@]}"; do
    pid="$(cat "$SERVICES/$s.pid")"
    awk -v s="$s" -v a="$(cpu "$pid")" -v b="${SERVICE_CPU0[$s]}" 'BEGIN {printf "  %s: %.1f\n", s, a - b}' >&2
done
# The load tool's own CPU, from `time`.
LOAD_CPU="$(awk '/levee-load CPU seconds/ {print $4 + $7}' "$RUN/load.time")"
RATE="$(grep -o '"envelopes_per_sec":[0-9.]*' "$OUT" | cut -d: -f2 || true)"
if [[ -z "$RATE" ]]; then
    RATE="$(awk '/envelopes\/s$/ {print $(NF-1)}' "$OUT")"
fi
# Envelopes per CPU-second of the whole system: the measured rate over the CPU the system
# used per second of the run (set-up and warm-up included, so a little low).
awk -v rate="$RATE" -v c0="$CPU0" -v c1="$CPU1" -v l="$LOAD_CPU" -v t0="$T0" -v t1="$T1" 'BEGIN {
    cores = (c1 - c0 + l) / (t1 - t0)
    printf "whole system (3 nodes, Kafka, Cassandra, load tool): %.2f cores busy; %.0f envelopes per CPU-second\n", cores, rate / cores
}' >&2
# What an envelope cost the database: the CQL statements the three nodes ran over the load
# run (levee_store_statements_total, a batch counting once) per envelope they stored.
awk '
    FNR == 1 { f++ }
    /^levee_store_statements_total\{/ {
        match($0, /statement="[^"]*"/)
        kind = substr($0, RSTART + 11, RLENGTH - 12)
        seen[kind] = 1
        n[f, kind] += $NF
    }
    /^levee_envelopes_stored_total\{/ { stored[f] += $NF }
    /^levee_envelopes_accepted_total\{/ { accepted[f] += $NF }
    END {
        envelopes = stored[2] - stored[1]
        if (envelopes <= 0) { print "store statements: no envelopes stored over the run"; exit }
        for (kind in seen) { d = n[2, kind] - n[1, kind]; total += d; if (d > 0) parts = parts sprintf(" %s %.3f", kind, d / envelopes) }
        printf "store statements per envelope stored (%d stored, %d accepted): %.3f;%s\n", envelopes, accepted[2] - accepted[1], total / envelopes, parts
    }' "$RUN/metrics.0" "$RUN/metrics.1" >&2
