#!/bin/bash
# Messaging throughput through `levee up --nodes N` as a separate process, N = 1 and 3, in one
# run (docs/PERFORMANCE.md). Build first: cargo build --release -p levee -p levee-bench
set -e
for n in 1 3; do
  d=$(mktemp -d)
  LEVEE_ACCOUNT_REQUESTS_PER_SEC=1000000 target/release/levee up --data $d --listen 127.0.0.1:0 --nodes $n > $d/out 2>/dev/null &
  pid=$!
  for i in $(seq 50); do grep -q '^  data:' $d/out 2>/dev/null && break; sleep 0.2; done
  addr=$(grep -m1 'address:' $d/out | awk '{print $2}')
  fp=$(grep -m1 'fingerprint:' $d/out | awk '{print $2}')
  for cw in "8 64" "32 16"; do set -- $cw
    echo "nodes=$n c=$1 w=$2 $(target/release/levee-load --server $addr --fingerprint $fp -c $1 -w $2 --duration 10 --json)"
  done
  kill -INT $pid; wait $pid || true
  rm -rf $d
done
