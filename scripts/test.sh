#!/usr/bin/env bash
# Runs every Levee test: formatting, lints, then the whole workspace's tests.
#
# This is the README's test command and what CI runs (.ci/run). It needs only a Rust
# toolchain; the embedded deployment has no external services. Slow stress/soak tests are
# #[ignore]d and run with: cargo test --workspace -- --ignored
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== benchmarks, once each in test mode (checks they run, measures nothing)"
cargo test --workspace --benches --locked

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

# One closing line for the whole run, summed over every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "levee: %d passed, %d failed\n", p, f }' "$log"
