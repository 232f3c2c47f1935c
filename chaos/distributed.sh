#!/usr/bin/env bash
# A chaos drill against a local distributed cluster: `levee node` processes (as many as the
# scenario's cluster.nodes, 3 by default) on the
# real Kafka and Cassandra of scripts/services.sh, with fault injection on, played by
# `levee-chaos run --admin ...` (every fault through the nodes' admin API; start_node
# starts one more `levee node` process).
#
#   chaos/distributed.sh node-loss                 # any scenario without a partition
#   chaos/distributed.sh backend-stall --out DIR   # more levee-chaos run flags after it
#
# Brings the services up if they are not (and down again at the end if it did), and stops
# every node process it started, however it ends. Nodes listen on 127.0.0.1:4533.. (admin
# 9200..). `partition` needs the embedded target (the drill's proxy in front of each node).
# When the drill fails, the nodes' logs, configurations and data are kept in
# target/chaos/failed-SCENARIO-STAMP (the report is in target/chaos/ as usual).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
SCENARIO="$1"
shift

cd "$ROOT"
cargo build --release --locked -q -p levee -p levee-chaos

STARTED_SERVICES=0
if ! scripts/services.sh status >/dev/null 2>&1; then
    scripts/services.sh up
    STARTED_SERVICES=1
fi

RUN="$(mktemp -d)"

STAMP="chaos-$(date +%s%N)"
TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# The scenario's [cluster]: how many nodes to start, the node settings a drill gives its
# embedded cluster (registration ceiling, wait target, hold, one line or one per node), and
# each node's own ceiling (`registration_max_per_s_by_node`, nodes past the list keep
# `registration_max_per_s`; 0 = none).
SCENARIO_FILE="$SCENARIO"
[[ -f "$SCENARIO_FILE" ]] || SCENARIO_FILE="$ROOT/chaos/scenarios/$SCENARIO.toml"
{
    read -r NODES
    read -r CLUSTER_EXTRA
    read -r -a CEILINGS
} < <(python3 - "$SCENARIO_FILE" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    c = tomllib.load(f).get("cluster", {})
extra = [f"load_target_wait_s = {float(c['load_target_wait_s'])}"] if "load_target_wait_s" in c else []
if "registration_hold_ms" in c:
    extra.append(f"registration_hold_ms = {int(c['registration_hold_ms'])}")
if not c.get("one_line", True):
    extra.append("registration_line_sync_ms = 0")
nodes = int(c.get("nodes", 3))
by_node = [float(x) for x in c.get("registration_max_per_s_by_node", [])]
default = float(c.get("registration_max_per_s", 0.0))
# Nodes a drill starts later (start_node) take the list's next entries, or the default.
ceilings = by_node + [default] * (nodes + 16)
print(nodes)
print("\\n".join(extra))
print(" ".join(str(x) for x in ceilings))
PY
)
# The waves come from one address; the per-prefix limit would measure the wrong thing.
BASE_EXTRA="fault_injection = true
admin_token = \"$TOKEN\"
connections_per_prefix_per_sec = 1000000
$(printf '%b' "$CLUSTER_EXTRA")"
# Node K's extra configuration: the shared lines and its own registration ceiling.
node_extra() {
    printf '%s\nregistration_max_per_s = %s\n' "$BASE_EXTRA" "${CEILINGS[$(($1 - 1))]}"
}
# shellcheck source=../scripts/lib/nodes.sh
source "$ROOT/scripts/lib/nodes.sh"
cleanup() {
    nodes_stop
    if [[ "$STARTED_SERVICES" == 1 ]]; then scripts/services.sh down || true; fi
}
trap cleanup EXIT

# What start_node runs: node N's configuration, then `levee node` in its place (so the
# drill owns the process and its output is the node's block).
cat >"$RUN/start-node" <<SH
#!/usr/bin/env bash
set -euo pipefail
ROOT="$ROOT" RUN="$RUN" STAMP="$STAMP" LEVEE_NODE_KEY="$LEVEE_NODE_KEY"
CEILINGS=(${CEILINGS[*]})
BASE_EXTRA='$BASE_EXTRA'
$(declare -f node_extra)
NODE_EXTRA="\$(node_extra "\$1")"
source "$ROOT/scripts/lib/nodes.sh"
node_config "\$1"
RUST_LOG=warn exec "$ROOT/target/release/levee" node --config "$RUN/node-\$1.toml" 2>"$RUN/node-\$1.err"
SH
chmod +x "$RUN/start-node"

ADMINS=()
for k in $(seq "$NODES"); do
    NODE_EXTRA="$(node_extra "$k")"
    node_start "$k"
    ADMINS+=("127.0.0.1:$((9199 + k))")
done
for k in $(seq "$NODES"); do
    node_wait "$k" "${NODE_PIDS[$((k - 1))]}"
done

set +e
target/release/levee-chaos run "$SCENARIO" \
    --admin "$(IFS=,; echo "${ADMINS[*]}")" --token "$TOKEN" --cluster-key "$LEVEE_NODE_KEY" \
    --start-command "$RUN/start-node {node}" "$@"
status=$?
set -e
# A failed drill keeps its nodes' logs (RUST_LOG=warn: membership rounds abandoned, roster
# errors, skipped log records), configurations and data for the post-mortem.
if [[ "$status" != 0 ]]; then KEEP_RUN="$ROOT/target/chaos/failed-$SCENARIO-$STAMP"; fi
exit "$status"
