#!/usr/bin/env bash
# Checks the Terraform/OpenTofu code in terraform/ without a network or a Kubernetes cluster:
#   - tofu fmt -check on all of it;
#   - tofu init, validate and test (plans against a mocked kubernetes provider) of the
#     module terraform/modules/levee-kubernetes and the example terraform/examples/kubernetes,
#     run on a copy under .cache/terraform/work, so nothing is written into terraform/;
#   - checkov's Terraform checks, with no failures (skips only inline, with a reason).
#
#   scripts/check-terraform.sh
#
# Everything it needs is built or installed once under .cache/ (git-ignored):
#   - OpenTofu, built from its Go module into .cache/bin/tofu (5 to 8 minutes on a 2-core
#     machine; `go install` refuses the module because of its replace directives);
#   - the hashicorp/kubernetes provider, built from its Go module (4 to 7 minutes) and put
#     in a filesystem mirror, .cache/terraform/mirror, that our own CLI configuration
#     (.cache/terraform/tofurc) makes the only installation source: no registry is asked;
#   - checkov, in a virtualenv, .cache/checkov-venv (from PyPI).
# Operators do not need any of this: `tofu init` gets the provider from the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
started=$SECONDS

OPENTOFU_MODULE=github.com/opentofu/opentofu
OPENTOFU_VERSION=v1.10.7
# The provider's v2/v3 tags are not valid Go module versions (the module path has no /v3),
# so the Go proxy only serves commits, as pseudo-versions: this is its main branch of
# 2026-08-21 (commit 3a33fb6), after the 3.2.1 release. The mirror lists it as 3.2.1, which
# satisfies the "~> 3.2" the module asks for.
PROVIDER_MODULE=github.com/hashicorp/terraform-provider-kubernetes
PROVIDER_PSEUDO_VERSION=v1.13.4-0.20260821094251-3a33fb6cc605
PROVIDER_VERSION=3.2.1
CHECKOV_VERSION=3.3.30

bin="$root/.cache/bin"
cache="$root/.cache/terraform"
logs="$cache/logs"
mkdir -p "$bin" "$logs"

fail() {
  echo "check-terraform: FAILED: $*" >&2
  exit 1
}

# Runs a command with its output in a log file, shown only if it fails.
quietly() {
  local log="$logs/$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    fail "$* (log: ${log#"$root"/})"
  fi
}

# Downloads a Go module at a version and builds a package of it to a file. Inside the
# module's own directory its go.mod (replace directives and all) applies.
go_build() {
  local module="$1" version="$2" package="$3" out="$4" ldflags="${5:-}"
  command -v go >/dev/null || fail "go is needed to build $module once (or put the binary at ${out#"$root"/})"
  go mod download "$module@$version"
  local dir
  dir="$(go env GOMODCACHE)/$module@$version"
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out" "$package")
}

# --- OpenTofu ----------------------------------------------------------------------------
tofu="$bin/tofu"
tofu_version() { if [ -x "$tofu" ]; then "$tofu" version 2>/dev/null | sed -n 1p || true; fi; }
if [[ "$(tofu_version)" != "OpenTofu ${OPENTOFU_VERSION}"* ]]; then
  echo "terraform: building OpenTofu $OPENTOFU_VERSION into .cache/bin/tofu (once; 5 to 8 minutes on 2 cores)"
  t=$SECONDS
  quietly build-tofu go_build "$OPENTOFU_MODULE" "$OPENTOFU_VERSION" ./cmd/tofu "$tofu" \
    "-s -w -X github.com/opentofu/opentofu/version.dev=no"
  echo "terraform: built OpenTofu in $((SECONDS - t)) s"
fi
echo "terraform: $(tofu_version) (.cache/bin/tofu)"

# --- the kubernetes provider, in a filesystem mirror ---------------------------------------
provider="$bin/terraform-provider-kubernetes"
if [ ! -x "$provider" ]; then
  echo "terraform: building the kubernetes provider ($PROVIDER_PSEUDO_VERSION) into .cache/bin (once; 4 to 7 minutes on 2 cores)"
  t=$SECONDS
  quietly build-provider go_build "$PROVIDER_MODULE" "$PROVIDER_PSEUDO_VERSION" . "$provider"
  echo "terraform: built the provider in $((SECONDS - t)) s"
fi
# The unpacked layout: HOSTNAME/NAMESPACE/TYPE/VERSION/OS_ARCH/terraform-provider-TYPE_vVERSION
platform="$(go env GOOS 2>/dev/null || echo linux)_$(go env GOARCH 2>/dev/null || echo amd64)"
mirror="$cache/mirror"
in_mirror="$mirror/registry.opentofu.org/hashicorp/kubernetes/$PROVIDER_VERSION/$platform/terraform-provider-kubernetes_v$PROVIDER_VERSION"
if ! cmp -s "$provider" "$in_mirror"; then
  mkdir -p "$(dirname "$in_mirror")"
  cp "$provider" "$in_mirror"
fi

# Our own CLI configuration: the mirror is the only place providers come from. Whatever
# the environment says (TF_CLI_CONFIG_FILE may name a missing file, a plugin cache may be
# set) is overridden for this script.
cat >"$cache/tofurc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.opentofu.org/hashicorp/kubernetes"]
  }
}
EOF
export TF_CLI_CONFIG_FILE="$cache/tofurc"
unset TF_PLUGIN_CACHE_DIR TF_DATA_DIR TF_CLI_ARGS TF_CLI_ARGS_init TF_CLI_ARGS_plan TF_CLI_ARGS_test
export TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1 TF_INPUT=0
echo "terraform: provider hashicorp/kubernetes $PROVIDER_VERSION from the mirror in .cache/terraform/mirror"

# --- fmt -----------------------------------------------------------------------------------
if ! "$tofu" fmt -check -recursive -diff -no-color terraform/ >"$logs/fmt.log" 2>&1; then
  cat "$logs/fmt.log" >&2
  fail "tofu fmt: the files above need \`.cache/bin/tofu fmt -recursive terraform/\`"
fi
echo "terraform: fmt ok"

# --- init, validate, test on a copy --------------------------------------------------------
# Without a local .terraform/, lock files, state or *.tfvars (which may hold secrets).
work="$cache/work"
rm -rf "$work"
mkdir -p "$work"
tar -C terraform -cf - --exclude=.terraform --exclude=.terraform.lock.hcl \
  --exclude='*.tfstate' --exclude='*.tfstate.*' --exclude='*.tfvars' --exclude='*.tfvars.json' . |
  tar -C "$work" -xf -

for dir in modules/levee-kubernetes examples/kubernetes; do
  name="${dir//\//-}"
  (
    cd "$work/$dir"
    quietly "$name-init" "$tofu" init -backend=false -input=false -no-color
    quietly "$name-validate" "$tofu" validate -no-color
    quietly "$name-test" "$tofu" test -no-color
  )
  summary="$(grep -E '^(Success|Failure)! ' "$logs/$name-test.log" | tail -1)"
  passed="$(sed -nE 's/^Success! ([0-9]+) passed, 0 failed\.$/\1/p' <<<"$summary")"
  [ -n "$passed" ] || fail "tofu test in terraform/$dir: ${summary:-no summary} (log: .cache/terraform/logs/$name-test.log)"
  echo "terraform: $dir: init, validate ok; tofu test: $passed passed, 0 failed"
done

# --- checkov -------------------------------------------------------------------------------
venv="$root/.cache/checkov-venv"
if [ ! -x "$venv/bin/checkov" ] || [ "$("$venv/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]; then
  echo "terraform: installing checkov $CHECKOV_VERSION into .cache/checkov-venv (once; a minute or two)"
  t=$SECONDS
  rm -rf "$venv"
  quietly venv python3 -m venv "$venv"
  quietly pip-install "$venv/bin/pip" install --quiet "checkov==$CHECKOV_VERSION"
  echo "terraform: installed checkov in $((SECONDS - t)) s"
fi
# --skip-download: no calls to Prisma Cloud for guidelines (there is no network here, and
# the checks themselves are in the package).
if ! "$venv/bin/checkov" -d terraform/ --framework terraform --skip-download --quiet --compact \
  >"$logs/checkov.log" 2>&1; then
  cat "$logs/checkov.log" >&2
  fail "checkov"
fi
counts="$(grep -E '^Passed checks: ' "$logs/checkov.log" | tail -1)"
[ -n "$counts" ] || fail "checkov printed no summary (log: .cache/terraform/logs/checkov.log)"
echo "terraform: checkov $CHECKOV_VERSION: $counts"

echo "check-terraform: ok ($((SECONDS - started)) s)"
