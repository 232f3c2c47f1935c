#!/usr/bin/env bash
# Levee beside the brokers a user would pick instead, the same work on the same machine in
# one run, interleaved (the machine is shared and noisy; a system measured only at a quiet
# moment would win by luck).
#
# The work is levee-load's: 8 connections, each publishing to the next with 64 publishes in
# flight, 256-byte messages, every message consumed and acknowledged by its recipient; a
# message counts once acknowledged. Each system runs in a process of its own, so its CPU
# time is measured apart from the load tool's.
#
#   levee          levee-load --node-process: one embedded node (fsync per batch)
#   levee-open-50% the same node under open-loop load at half the mean rate levee just
#                  reached (levee-load --rate): the latency of a node that is not saturated
#   nats-js-sync   nats-server with JetStream file storage, sync_interval: always
#                  (fsync per write, so an acknowledged message survives power loss)
#   nats-js        the same with nats-server's default sync_interval (fsync every
#                  2 minutes: acknowledged messages can be lost on power loss)
#   mosquitto-qos1 Mosquitto, QoS 1, persistent sessions, persistence on (it writes its
#                  store at autosave intervals and never fsyncs per message)
#
# NATS is also measured publishing only and consuming only (a filled stream drained).
# The brokers are driven by bench/peers (Go: nats.go and paho.mqtt.golang), Levee by
# levee-load (Rust: levee-client). The tools are built under .cache/peers/ on first use:
# nats-server from its Go module, Mosquitto from the Debian package (installed with
# apt-get if missing, which needs root).
#
# Prints a table and a last line `levee/nats-js-sync = R1, levee/mosquitto-qos1 = R2`
# (mean end-to-end rates). Every run's JSON is kept in .cache/peers/results-<time>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=2 duration=10 warmup=2 connections=8 window=64 size=256
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  cat <<'EOF'
Usage: bench/peers.sh [--rounds N] [--duration S] [--connections C] [--window W] [--size B]
  --rounds N       times each system is measured, interleaved (default 2)
  --duration S     seconds measured per run, after 2 s of warm-up (default 10)
  --connections C  publishing connections (default 8)
  --window W       publishes in flight per connection (default 64)
  --size B         message size in bytes (default 256)
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "peers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

nats_version=v2.15.3
cache="$PWD/.cache/peers"
bin="$cache/bin"
mkdir -p "$bin"
results="$cache/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"

echo "== tools"
command -v go >/dev/null || { echo "peers.sh: needs go (to build nats-server and bench/peers)" >&2; exit 1; }
if [ "$("$bin/nats-server" --version 2>/dev/null)" != "nats-server: $nats_version" ]; then
  GOBIN="$bin" go install "github.com/nats-io/nats-server/v2@$nats_version"
fi
(cd bench/peers && go build -o "$bin/peerload" .)
if ! command -v mosquitto >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >/dev/null
  else
    echo "peers.sh: needs mosquitto (Debian: apt-get install mosquitto)" >&2; exit 1
  fi
fi
cargo build --release --locked -q -p levee-bench --bin levee-load
echo "nats-server $nats_version, $(mosquitto -h 2>/dev/null | head -1), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "peers.sh: nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

server_pid=""
run_dir=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  if [ -n "$run_dir" ]; then rm -rf "$run_dir"; run_dir=""; fi
}
trap stop_server EXIT

load_flags=(-connections "$connections" -window "$window" -size "$size" -duration "$duration" -warmup "$warmup")

# run_nats LABEL MODE SYNC(yes|no)
run_nats() {
  run_dir="$(mktemp -d "$cache/run.XXXXXX")"
  local port sync=""
  port="$(free_port)"
  [ "$3" = yes ] && sync="sync_interval: always"
  cat >"$run_dir/nats.conf" <<EOF
listen: 127.0.0.1:$port
jetstream {
  store_dir: "$run_dir/store"
  $sync
}
EOF
  "$bin/nats-server" -c "$run_dir/nats.conf" >"$run_dir/server.log" 2>&1 &
  server_pid=$!
  wait_port "$port"
  "$bin/peerload" -system nats -url "nats://127.0.0.1:$port" -mode "$2" -label "$1" \
    -server-pid "$server_pid" "${load_flags[@]}" | tee -a "$results"
  stop_server
}

run_mosquitto() {
  run_dir="$(mktemp -d "$cache/run.XXXXXX")"
  local port
  port="$(free_port)"
  # user root: run as whoever started the script (mosquitto otherwise switches to its own
  # user, which cannot write the store here). Queues and in-flight windows are raised so
  # that the broker, not its defaults, limits a 64-deep window.
  cat >"$run_dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
user $(id -un)
persistence true
persistence_location $run_dir/
max_inflight_messages $window
max_queued_messages 100000
log_dest stderr
EOF
  mosquitto -c "$run_dir/mosquitto.conf" >"$run_dir/server.log" 2>&1 &
  server_pid=$!
  wait_port "$port"
  "$bin/peerload" -system mqtt -url "tcp://127.0.0.1:$port" -mode e2e -label "$1" \
    -server-pid "$server_pid" "${load_flags[@]}" | tee -a "$results"
  stop_server
}

# run_levee LABEL MODE [levee-load flags]
run_levee() {
  local label="$1" mode="$2"
  shift 2
  target/release/levee-load --node-process -c "$connections" -w "$window" --size "$size" \
    --duration "$duration" --warmup "$warmup" --json "$@" \
    | python3 -c 'import json, sys; r = json.load(sys.stdin); r.update(label=sys.argv[1], system="levee", mode=sys.argv[2]); print(json.dumps(r))' "$label" "$mode" \
    | tee -a "$results"
}

for round in $(seq "$rounds"); do
  echo "== round $round of $rounds"
  run_levee levee e2e
  run_nats nats-js-sync e2e yes
  run_mosquitto mosquitto-qos1
  run_nats nats-js e2e no
  run_nats nats-js-sync pub yes
  run_nats nats-js-sync consume yes
done

# Latency at a load the node is not saturated by: open loop (sends on a fixed schedule,
# timed from it, so a slow answer cannot hide the sends it delays) at half the mean
# closed-loop rate just measured.
half="$(python3 -c 'import json, sys; rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]; e = [r["envelopes_per_sec"] for r in rs if r["label"] == "levee"]; print(round(sum(e) / len(e) / 2))' "$results")"
for round in $(seq "$rounds"); do
  echo "== open loop at $half/s, round $round of $rounds"
  run_levee levee-open-50% open --rate "$half"
done

echo "== results ($results)"
python3 - "$results" <<'EOF'
import json, statistics, sys

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
groups = {}
for r in runs:
    r.setdefault("per_sec", r.get("envelopes_per_sec"))
    r.setdefault("server_cpu_s", r.get("node_cpu_s"))
    r.setdefault("client_cpu_s", r.get("load_cpu_s"))
    groups.setdefault((r["label"], r["mode"]), []).append(r)

def mean(rs, key):
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.mean(values) if values else float("nan")

print(f"{'system':<24}{'mode':<9}{'runs':>5}{'msgs/s mean':>13}{'min–max':>17}"
      f"{'p50 ms':>9}{'p99 ms':>9}{'server µs/msg':>15}{'msgs/CPU-s':>12}")
rates = {}
for (label, mode), rs in groups.items():
    per_sec = [r["per_sec"] for r in rs]
    rate = statistics.mean(per_sec)
    messages = sum(r["messages"] if "messages" in r else r["envelopes"] for r in rs)
    server = sum(r["server_cpu_s"] or 0 for r in rs)
    total = server + sum(r["client_cpu_s"] or 0 for r in rs)
    latency = mode != "consume"
    if mode == "open":
        label = f"{label} {rs[0]['offered_per_sec']:,.0f}/s"
    print(f"{label:<24}{mode:<9}{len(rs):>5}{rate:>13,.0f}{f'{min(per_sec):,.0f}–{max(per_sec):,.0f}':>17}"
          f"{mean(rs, 'p50_ms') if latency else float('nan'):>9.2f}"
          f"{mean(rs, 'p99_ms') if latency else float('nan'):>9.2f}"
          f"{1e6 * server / messages:>15.1f}{messages / total:>12,.0f}")
    if mode == "e2e":
        rates[label] = rate
print("(means over runs; msgs/CPU-s: messages per CPU-second of the server and the load")
print(" tool together; e2e counts a message once its recipient acknowledged it)")
open_runs = [r for r in runs if r["mode"] == "open"]
if open_runs:
    print("levee open loop at 50%: p99 " + ", ".join(f"{r['p99_ms']:.1f}" for r in open_runs)
          + " ms; missed " + ", ".join(str(r["missed"]) for r in open_runs))
print(f"levee/nats-js-sync = {rates['levee'] / rates['nats-js-sync']:.2f}, "
      f"levee/mosquitto-qos1 = {rates['levee'] / rates['mosquitto-qos1']:.2f}")
EOF
