#!/usr/bin/env bash
# Installs the system programs Weft's agent and tests use, when they are missing: iproute2 (ip, bridge, tc),
# util-linux (nsenter), iputils-ping, iperf3, iptables (masquerade, network policy, portmap), ipset (network policy),
# socat (SCTP listeners and probes in test/policy-conformance.e2e.test.ts: Node has no SCTP sockets), kmod (modprobe,
# to load the kernel's sctp module where it is a module), and Debian's reference CNI plugins (containernetworking-plugins:
# portmap, bandwidth, tuning, loopback in /usr/lib/cni), which the conformance tests chain with weft-cni, and podman
# with runc, conmon and busybox (test/podman.e2e.test.ts), and for the real Kubernetes API server the tests start
# (scripts/kube/): golang-1.19 and dpkg-dev to build kube-apiserver 1.20.2 from Debian's source package, etcd-server for
# its store; for the highly available PostgreSQL of scripts/ha/up.sh (test/ha-failover.test.ts): postgresql-15 (its
# binaries under /usr/lib/postgresql/15/bin, and psql), patroni, etcd-server and haproxy; all from Debian, without
# recommends. Installing starts no service (a policy-rc.d forbids it for the duration, unless the machine has its own):
# the tests start their own etcd, PostgreSQL and HAProxy on free ports. (kubectl 1.20.2 is not installed: scripts/kube/build.sh takes it
# from Debian's kubernetes-client into its cache, since that package's /usr/bin/kubectl collides with another
# kubectl a machine may have, e.g. google-cloud-sdk's.)
# Needs root to install; without root it only reports.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v bridge >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v sysctl >/dev/null 2>&1 || need+=(procps)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ipset >/dev/null 2>&1 || need+=(ipset)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v modprobe >/dev/null 2>&1 || need+=(kmod)
for p in portmap bandwidth tuning loopback; do [ -x /usr/lib/cni/$p ] || need+=(containernetworking-plugins); done
for p in podman runc conmon busybox; do command -v $p >/dev/null 2>&1 || need+=($p); done
[ -x /usr/lib/go-1.19/bin/go ] || need+=(golang-1.19)
command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
command -v patroni >/dev/null 2>&1 || need+=(patroni)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "weft: missing system packages: ${need[*]} (run as root to install them; privileged tests will skip)" >&2
  exit 0
fi
echo "weft: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
