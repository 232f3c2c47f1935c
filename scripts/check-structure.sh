#!/usr/bin/env bash
# Checks the workspace's shape, which the compiler does not:
#   - levee-client depends on none of the node's, the stores' or the CLI's crates;
#   - `levee --no-default-features` builds without librdkafka and the CQL driver;
#   - one version of each direct dependency in Cargo.lock;
#   - no import cycles between the top-level modules of any crate.
# Part of scripts/test.sh; prints what is wrong and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0

server_only='^(rdkafka|rdkafka-sys|scylla|fjall|figment|clap|governor|metrics-exporter-prometheus|rcgen|levee-relay|levee-sharding|levee-queue) '
found=$(cargo tree --locked -p levee-client -e normal --prefix none | grep -E "$server_only" | sort -u || true)
if [ -n "$found" ]; then
  echo "levee-client depends on server-side crates:"; echo "$found"; bad=1
fi

found=$(cargo tree --locked -p levee --no-default-features -e normal --prefix none \
  | grep -E '^(rdkafka|rdkafka-sys|scylla) ' | sort -u || true)
if [ -n "$found" ]; then
  echo "levee --no-default-features still depends on:"; echo "$found"; bad=1
fi
cargo check --locked -q -p levee --no-default-features

python3 - <<'PY' || bad=1
import os, re, sys, tomllib
failed = False
lock = tomllib.load(open("Cargo.lock", "rb"))
versions = {}
for package in lock["package"]:
    versions.setdefault(package["name"], set()).add(package["version"])
direct = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["dependencies"]
for name in direct:
    if len(versions.get(name, ())) > 1:
        print(f"two versions of direct dependency {name}: {sorted(versions[name])}")
        failed = True

members = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
for crate in members:
    root = f"{crate}/src"
    uses = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if not file.endswith(".rs"):
                continue
            path = os.path.join(folder, file)
            top = os.path.relpath(path, root).split("/")[0].removesuffix(".rs")
            if top in ("lib", "main"):
                continue
            code = open(path).read().split("#[cfg(test)]")[0]
            code = "\n".join(line.split("//")[0] for line in code.splitlines())
            uses.setdefault(top, set()).update(re.findall(r"crate::([a-z_]+)", code))
    for a in uses:
        for b in uses[a]:
            if b != a and b in uses and a in uses[b] and a < b:
                print(f"{crate}: modules {a} and {b} import each other")
                failed = True
sys.exit(1 if failed else 0)
PY
if [ "$bad" -ne 0 ]; then
  exit 1
fi
echo "structure: client without server crates, embedded-only build, one version per direct dependency, no module cycles"
