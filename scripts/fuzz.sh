#!/usr/bin/env bash
# Coverage-guided fuzzing of what Levee reads from strangers: libFuzzer through cargo-fuzz,
# on the stable toolchain (`--sanitizer none`: the address sanitizer needs nightly, and
# Levee's crates forbid unsafe code, so what it would add is small), with debug assertions
# and overflow checks on. Targets are in fuzz/fuzz_targets/, seeds in fuzz/corpus/.
#
#   scripts/fuzz.sh                      every target, 10,000,000 executions each
#   scripts/fuzz.sh --quick              20,000 each from an unoptimised build, which
#                                        compiles faster (what scripts/test.sh runs)
#   scripts/fuzz.sh --runs N             N executions each
#   scripts/fuzz.sh frame config         some targets
#
# Installs cargo-fuzz if it is missing. What a run finds is kept in fuzz/target/corpus/
# (not in git) and grows the next run. Prints a line per target and exits non-zero if a
# target crashed; the input that did it is in fuzz/artifacts/<target>/, and
# `cargo fuzz run --sanitizer none -O -a <target> <file>` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000000
build=(-O -a)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --quick) runs=20000; build=(--dev); shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame ticket pass work config)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (once)"
  cargo install --locked cargo-fuzz --version 0.13.2
fi

echo "== building the fuzz targets"
cargo fuzz build --sanitizer none "${build[@]}"

failed=0
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work"
  log="fuzz/target/$t.log"
  # New inputs go to the first directory (the working corpus); the seeds are only read.
  if cargo fuzz run --sanitizer none "${build[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
      -runs="$runs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status="0 crashes"
  else
    status="CRASHED (see $log and fuzz/artifacts/$t/)"
    failed=1
  fi
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  secs=$(awk '/^Done [0-9]+ runs in/ { print $5 }' "$log")
  echo "fuzz $t: ${execs:-?} executions in ${secs:-?} s, $status, corpus $(ls "$work" | wc -l) inputs"
done
exit "$failed"
