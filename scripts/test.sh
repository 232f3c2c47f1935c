#!/usr/bin/env bash
# Runs every Levee test: formatting, lints, then the whole workspace's tests.
#
# This is the README's test command and what CI runs (.ci/run). Besides a Rust toolchain
# it needs java (17) and mvn: the distributed tests run against real Apache Kafka and
# Apache Cassandra, which scripts/services.sh fetches from Maven Central, starts on
# loopback, and this script stops again however it ends.
#
# Tests that need those services are #[ignore]d (so a plain `cargo test` works without
# them) and run here by name, after the rest. Slow stress/soak tests are #[ignore]d too,
# outside those test files, and are run by hand (see docs/PERFORMANCE.md). The fuzz targets
# get a short run here (cargo-fuzz is installed if missing); the long one is by hand too.
# The Terraform code is checked offline (scripts/check-terraform.sh needs go and python3:
# it builds OpenTofu and the kubernetes provider, and installs checkov, under .cache/).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== API docs (cargo doc, warnings are errors: broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -q \
  -p levee-protocol -p levee-client -p levee-relay -p levee-sharding -p levee-queue -p levee \
  -p levee-bench -p levee-chaos

echo "== workspace structure (scripts/check-structure.sh)"
scripts/check-structure.sh

echo "== operators' files (scripts/check-ops.sh)"
scripts/check-ops.sh

echo "== Terraform (scripts/check-terraform.sh: tofu fmt, validate, test; checkov)"
# The first run on a machine builds OpenTofu and the kubernetes provider from their Go
# modules and installs checkov (about 10 minutes on 2 cores); later runs take seconds.
scripts/check-terraform.sh

echo "== benchmarks, once each in test mode (checks they run, measures nothing)"
# `--bench '*'`, not `--benches`: that also runs every library's unit tests, which the
# next step runs anyway.
cargo test --workspace --bench '*' --locked

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

echo "== fuzzing, a short run of every target (scripts/fuzz.sh --quick)"
scripts/fuzz.sh --quick

echo "== real Kafka and Cassandra (scripts/services.sh)"
trap 'scripts/services.sh down || true; rm -f "$log"' EXIT
# From empty data, as on a fresh checkout: topics left by drills and benchmarks (64
# partitions each; thousands after a day of drills) make a broker restart slow enough to
# turn the broker-restart test's 30 s login deadline into a flake.
scripts/services.sh wipe
scripts/services.sh up

echo "== tests against the real services"
# Every #[ignore]d test in these files needs the services, and nothing else is ignored there.
cargo test --locked -p levee-queue --test kafka -- --ignored 2>&1 | tee -a "$log"
cargo test --locked -p levee-sharding --test scylla -- --ignored 2>&1 | tee -a "$log"
cargo test --locked -p levee --test distributed -- --ignored 2>&1 | tee -a "$log"
cargo test --locked -p levee --test roster -- --ignored 2>&1 | tee -a "$log"

# One closing line for the whole run, summed over every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "levee: %d passed, %d failed\n", p, f }' "$log"
