#!/usr/bin/env bash
# What the benchmarks need beyond the tests: pgbench (Debian: postgresql-15), the reference CNI plugins, and BIRD 1.6
# (Debian: bird) for bench/routes's baseline.
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
# bench/routes's baseline (../shared/baselines/bgp-mesh.sh): BIRD 1.6, the line Calico uses (Debian's `bird`, not
# `bird2`, whose configuration language differs). The benchmark runs its own daemons in namespaces; the package's
# service, which would run one in the machine's own namespace, is stopped and disabled where systemd runs it.
if ! command -v bird >/dev/null 2>&1 || ! command -v birdc >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends bird >/dev/null
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then systemctl disable --now bird bird6 >/dev/null 2>&1 || true; fi
fi
