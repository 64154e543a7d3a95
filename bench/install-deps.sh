#!/usr/bin/env bash
# What the benchmarks need beyond the tests: pgbench (Debian: postgresql-15).
set -euo pipefail
if ! command -v pgbench >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi
# bench/cni's baseline: Debian's reference CNI plugins (bridge, host-local) in /usr/lib/cni.
if [ ! -x /usr/lib/cni/bridge ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends containernetworking-plugins >/dev/null
fi
