# Shell functions for starting `levee node` processes of a local distributed cluster on the
# services from scripts/services.sh. Sourced by bench/distributed.sh and chaos/distributed.sh.
#
# Node k listens on 127.0.0.1:(4532 + k), its admin port on 127.0.0.1:(9199 + k), and keeps
# its files in RUN/node-k. Set before calling: ROOT (the repository), RUN (a scratch
# directory), STAMP (unique per cluster: its name and Kafka topic), and optionally
# NODE_EXTRA (more TOML lines for every node's configuration) and LEVEE_BIN (the `levee`
# binary; default target/release/levee, e.g. another build to compare side by side).

LEVEE_CQL="${LEVEE_CQL:-127.0.0.1:19042}"
LEVEE_KAFKA="${LEVEE_KAFKA:-127.0.0.1:19092}"
# Every node of one cluster shares it (ticket signatures).
LEVEE_NODE_KEY="${LEVEE_NODE_KEY:-$(printf 'cd%.0s' $(seq 32))}"

# Node processes started so far (node_start appends), for nodes_stop.
NODE_PIDS=()

# Stops every node started by node_start (SIGTERM, then waits) and deletes RUN, or moves it
# to KEEP_RUN when that is set (the nodes' configurations, data and logs, for a post-mortem).
nodes_stop() {
    for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "${KEEP_RUN:-}" ]]; then
        mkdir -p "$(dirname "$KEEP_RUN")"
        mv "$RUN" "$KEEP_RUN"
        echo "node logs, configurations and data kept in $KEEP_RUN" >&2
    else
        rm -rf "$RUN"
    fi
}

# Writes RUN/node-K.toml.
node_config() {
    local k="$1"
    cat >"$RUN/node-$k.toml" <<TOML
node_name = "node-$k"
listen = "127.0.0.1:$((4532 + k))"
admin_listen = "127.0.0.1:$((9199 + k))"
data_dir = "$RUN/node-$k"
cluster_key = "$LEVEE_NODE_KEY"
cluster_name = "levee-$STAMP"
${NODE_EXTRA:-}

[scylla]
nodes = ["$LEVEE_CQL"]
keyspace = "levee_local"

[scylla.replication]
class = "simple"
factor = 1

[kafka]
brokers = "$LEVEE_KAFKA"
topic = "levee-$STAMP"
replication = 1
TOML
}

# Starts node K in the background (output in RUN/node-K.out and .err); its pid in NODE_PID
# and appended to NODE_PIDS.
node_start() {
    local k="$1"
    node_config "$k"
    RUST_LOG=warn "${LEVEE_BIN:-$ROOT/target/release/levee}" node --config "$RUN/node-$k.toml" \
        >"$RUN/node-$k.out" 2>"$RUN/node-$k.err" &
    NODE_PID=$!
    NODE_PIDS+=("$NODE_PID")
}

# Waits until node K (pid PID) has printed its `cluster:` line, i.e. joined; fails loudly
# if it exits or takes more than a minute.
node_wait() {
    local k="$1" pid="$2"
    for _ in $(seq 120); do
        grep -q '^ *cluster:' "$RUN/node-$k.out" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null ||
            { cat "$RUN/node-$k.err" >&2; echo "node-$k exited before joining" >&2; return 1; }
        sleep 0.5
    done
    cat "$RUN/node-$k.out" "$RUN/node-$k.err" >&2
    echo "node-$k did not join within a minute" >&2
    return 1
}
