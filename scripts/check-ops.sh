#!/usr/bin/env bash
# Checks the operators' files in ops/ with the tools made for them:
#   - the systemd unit: systemd-analyze verify (skipped where systemd-analyze is missing);
#   - the Prometheus rules: promtool check rules, and the alert unit tests
#     (ops/prometheus/levee-alerts.test.yml) with promtool test rules;
#   - the Grafana dashboard: valid JSON.
# That every metric the dashboard and the rules name is exported is checked against a
# real node by levee/tests/ops.rs.
#
#   scripts/check-ops.sh                  promtool from PATH or .cache/bin, else skipped
#   scripts/check-ops.sh --build-promtool first builds promtool from its Go module into
#                                         .cache/bin (13 minutes on a 2-core machine, so
#                                         not in the test command; once)
set -euo pipefail
cd "$(dirname "$0")/.."
PROMETHEUS_MODULE_VERSION=v0.316.0   # Prometheus 3.16

if [ "${1:-}" = "--build-promtool" ]; then
  GOBIN="$PWD/.cache/bin" go install \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
fi

if command -v systemd-analyze >/dev/null; then
  unit="$(mktemp -d)/levee.service"
  # verify insists that ExecStart's binary exists; the unit names where it is installed.
  sed 's|/usr/local/bin/levee|/bin/true|' ops/systemd/levee.service >"$unit"
  systemd-analyze verify "$unit"
  echo "ops: systemd unit verified"
else
  echo "ops: systemd-analyze not found; systemd unit not verified"
fi

python3 -c 'import json, sys; json.load(open(sys.argv[1]))' ops/grafana/levee-dashboard.json
echo "ops: dashboard is valid JSON"

promtool="$(command -v promtool || true)"
if [ -z "$promtool" ] && [ -x .cache/bin/promtool ]; then
  promtool=.cache/bin/promtool
fi
if [ -n "$promtool" ]; then
  "$promtool" check rules ops/prometheus/levee-alerts.yml
  "$promtool" test rules ops/prometheus/levee-alerts.test.yml
  echo "ops: alert rules checked and their unit tests pass ($promtool)"
else
  echo "ops: promtool not found; run scripts/check-ops.sh --build-promtool to check the rules"
fi
