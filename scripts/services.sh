#!/usr/bin/env bash
# Real Apache Kafka (KRaft, one broker) and Apache Cassandra (one node; it speaks the CQL
# protocol ScyllaDB speaks) for development and the distributed tests — no Docker.
#
#   scripts/services.sh up       fetch the jars if needed, start both, wait until they answer
#   scripts/services.sh down     stop exactly the processes `up` started (by pid file)
#   scripts/services.sh status   say what runs and whether it answers
#   scripts/services.sh wipe     down, then delete their data
#
# Faults, for the distributed tests and drills (NAME is kafka or cassandra; each acts only
# on the process `up` started, by its pid file):
#   scripts/services.sh restart NAME   stop it (SIGTERM), start it again, wait until it answers
#   scripts/services.sh pause NAME     freeze it (SIGSTOP): connections stay open, nothing answers
#   scripts/services.sh resume NAME    thaw it (SIGCONT)
#
# Jars come from Maven Central with the machine's Maven (poms in scripts/services/) into a
# cache outside git ($LEVEE_SERVICES_CACHE, default ~/.cache/levee-services). Configs are
# written from the templates in scripts/services/ into $LEVEE_SERVICES_DIR (default
# target/services), with data, logs and pid files. Everything binds 127.0.0.1 on
# non-default ports (override with the variables below). Needs: java (17) and mvn.
#
# Readiness is a real request: a Kafka metadata request (topic list) and a CQL query
# (SELECT release_version FROM system.local) — not an open port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATES="$ROOT/scripts/services"
CACHE="${LEVEE_SERVICES_CACHE:-$HOME/.cache/levee-services}"
RUN="${LEVEE_SERVICES_DIR:-$ROOT/target/services}"
KAFKA_PORT="${LEVEE_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${LEVEE_KAFKA_CONTROLLER_PORT:-19093}"
CASSANDRA_PORT="${LEVEE_CASSANDRA_PORT:-19042}"
CASSANDRA_STORAGE_PORT="${LEVEE_CASSANDRA_STORAGE_PORT:-17000}"
CASSANDRA_SSL_STORAGE_PORT="${LEVEE_CASSANDRA_SSL_STORAGE_PORT:-17001}"
CASSANDRA_JMX_PORT="${LEVEE_CASSANDRA_JMX_PORT:-17199}"
READY_TIMEOUT="${LEVEE_SERVICES_TIMEOUT:-180}"

DATA="$RUN/data"
LOGS="$RUN/logs"
CONF="$RUN/conf"

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"
}

# fetch NAME: the jars of scripts/services/NAME.pom.xml into $CACHE/NAME/lib, once.
fetch() {
    local name="$1" dir="$CACHE/$1"
    local stamp="$dir/.complete-$(sha256sum "$TEMPLATES/$name.pom.xml" | cut -c1-16)"
    [[ -f "$stamp" ]] && return 0
    need mvn "Maven fetches the $name jars from Maven Central"
    say "fetching $name jars with Maven into $dir (once)"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$TEMPLATES/$name.pom.xml" "$dir/pom.xml"
    if ! mvn -q -B -f "$dir/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$dir/lib" >"$dir/mvn.log" 2>&1; then
        tail -20 "$dir/mvn.log" >&2
        die "Maven could not fetch the $name jars (log: $dir/mvn.log)"
    fi
    touch "$stamp"
}

# render TEMPLATE OUT: fill in @NAME@ placeholders.
render() {
    sed -e "s|@DATA@|$DATA|g" -e "s|@LOGS@|$LOGS|g" \
        -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|@CASSANDRA_PORT@|$CASSANDRA_PORT|g" \
        -e "s|@CASSANDRA_STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
        -e "s|@CASSANDRA_SSL_STORAGE_PORT@|$CASSANDRA_SSL_STORAGE_PORT|g" \
        "$TEMPLATES/$1" >"$2"
}

pidfile() { echo "$RUN/$1.pid"; }

# running NAME: its pid if the process we started still runs (checked by its command line,
# so a reused pid is never mistaken for ours).
running() {
    local f pid
    f="$(pidfile "$1")"
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-Dlevee.service=$1" \
        && echo "$pid"
}

kafka_java() {
    java -Xms256m -Xmx512m -Dlog4j.configuration="file:$CONF/kafka-log4j.properties" \
        -cp "$CACHE/kafka/lib/*" "$@"
}

kafka_ready() {
    kafka_java org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list >/dev/null 2>&1
}

cassandra_ready() {
    java -Dlogback.configurationFile="$TEMPLATES/quiet-logback.xml" \
        -cp "$CACHE/cassandra/lib/*" "$TEMPLATES/CqlProbe.java" 127.0.0.1 "$CASSANDRA_PORT" \
        >/dev/null 2>&1
}

start_kafka() {
    if running kafka >/dev/null; then say "kafka already runs"; return; fi
    render kafka.properties.in "$CONF/kafka.properties"
    render kafka-log4j.properties.in "$CONF/kafka-log4j.properties"
    if [[ ! -f "$DATA/kafka/meta.properties" ]]; then
        mkdir -p "$DATA/kafka"
        local id
        id="$(kafka_java kafka.tools.StorageTool random-uuid | tail -1)"
        kafka_java kafka.tools.StorageTool format -t "$id" -c "$CONF/kafka.properties" \
            >"$LOGS/kafka-format.log" 2>&1 || die "formatting Kafka's storage failed ($LOGS/kafka-format.log)"
    fi
    nohup java -Dlevee.service=kafka -Xms256m -Xmx512m \
        -Dlog4j.configuration="file:$CONF/kafka-log4j.properties" \
        -cp "$CACHE/kafka/lib/*" kafka.Kafka "$CONF/kafka.properties" \
        >"$LOGS/kafka.out" 2>&1 </dev/null &
    echo $! >"$(pidfile kafka)"
}

start_cassandra() {
    if running cassandra >/dev/null; then say "cassandra already runs"; return; fi
    render cassandra.yaml.in "$CONF/cassandra.yaml"
    render cassandra-logback.xml.in "$CONF/cassandra-logback.xml"
    mkdir -p "$DATA/cassandra"
    # The module flags Cassandra's own jvm17-server.options passes on Java 17.
    local opens=()
    for p in java.base/jdk.internal.misc java.base/jdk.internal.ref java.base/sun.nio.ch \
        java.management.rmi/com.sun.jmx.remote.internal.rmi java.rmi/sun.rmi.registry \
        java.rmi/sun.rmi.server java.sql/java.sql; do
        opens+=(--add-exports "$p=ALL-UNNAMED")
    done
    for p in java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref \
        java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module \
        java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal \
        java.base/sun.nio.ch java.base/java.io java.base/java.nio java.base/java.util.concurrent \
        java.base/java.util java.base/java.util.concurrent.atomic java.base/java.lang \
        java.base/java.math java.base/java.lang.reflect java.base/java.net; do
        opens+=(--add-opens "$p=ALL-UNNAMED")
    done
    nohup java -Dlevee.service=cassandra -Xms512m -Xmx1g "${opens[@]}" \
        -Dcassandra.config="file://$CONF/cassandra.yaml" \
        -Dlogback.configurationFile="$CONF/cassandra-logback.xml" \
        -Dcassandra-foreground=yes -Dcassandra.storagedir="$DATA/cassandra" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=0 \
        -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT" \
        -cp "$CACHE/cassandra/lib/*" org.apache.cassandra.service.CassandraDaemon \
        >"$LOGS/cassandra.out" 2>&1 </dev/null &
    echo $! >"$(pidfile cassandra)"
}

# wait_ready NAME: until NAME_ready succeeds, the process dies, or the timeout.
wait_ready() {
    local name="$1" deadline=$((SECONDS + READY_TIMEOUT))
    until "${name}_ready"; do
        if ! running "$name" >/dev/null; then
            tail -20 "$LOGS/$name.out" "$LOGS/$name.log" 2>/dev/null >&2 || true
            die "$name exited while starting (logs in $LOGS)"
        fi
        if ((SECONDS >= deadline)); then
            die "$name did not answer within ${READY_TIMEOUT}s (logs in $LOGS)"
        fi
        sleep 1
    done
    say "$name answers"
}

stop() {
    local name="$1" pid
    if ! pid="$(running "$name")"; then
        rm -f "$(pidfile "$name")"
        return 0
    fi
    # A paused (SIGSTOPped) process handles SIGTERM only once it runs again.
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop within 30 s; killing it"
        kill -KILL "$pid"
    fi
    rm -f "$(pidfile "$name")"
    say "$name stopped"
}

up() {
    need java "Kafka and Cassandra run on the JVM (17)"
    mkdir -p "$DATA" "$LOGS" "$CONF"
    fetch kafka
    fetch cassandra
    start_kafka
    start_cassandra
    # If either never answers, stop both rather than leave half a set-up behind.
    trap 'stop kafka; stop cassandra' EXIT
    wait_ready kafka
    wait_ready cassandra
    trap - EXIT
    say "up: Kafka at 127.0.0.1:$KAFKA_PORT, Cassandra (CQL) at 127.0.0.1:$CASSANDRA_PORT"
}

status() {
    local code=0
    for name in kafka cassandra; do
        local pid
        if pid="$(running "$name")"; then
            if "${name}_ready"; then say "$name: running (pid $pid), answers"
            else say "$name: running (pid $pid), not answering"; code=1; fi
        else
            say "$name: not running"; code=1
        fi
    done
    return $code
}

# service NAME: NAME if it is one of ours, else a usage error.
service() {
    case "${1:-}" in
        kafka|cassandra) echo "$1" ;;
        *) die "unknown service ${1:-(none)}: kafka or cassandra" ;;
    esac
}

restart() {
    local name
    name="$(service "$1")"
    stop "$name"
    "start_$name"
    wait_ready "$name"
}

# signal NAME SIG: send SIG to the process `up` started for NAME.
signal() {
    local name pid
    name="$(service "$1")"
    pid="$(running "$name")" || die "$name is not running"
    kill "-$2" "$pid"
    say "$name: SIG$2 sent (pid $pid)"
}

case "${1:-}" in
    up) up ;;
    down) stop cassandra; stop kafka ;;
    status) status ;;
    wipe) stop cassandra; stop kafka; rm -rf "$DATA" "$LOGS"; say "data deleted" ;;
    restart) restart "${2:-}" ;;
    pause) signal "${2:-}" STOP ;;
    resume) signal "${2:-}" CONT ;;
    *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
