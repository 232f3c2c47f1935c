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

echo "== cargo test"
cargo test --workspace --locked

echo "== benchmarks, once each in test mode"
cargo test --workspace --benches --locked
