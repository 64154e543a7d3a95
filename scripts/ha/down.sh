#!/usr/bin/env bash
# Stops everything scripts/ha/up.sh started in DIR (HAProxy, the Patroni members and their PostgreSQL servers, the
# etcd members) and removes DIR. Safe to run twice, and on a half-started DIR. Only processes whose command line
# names DIR are signalled, so a reused pid is never hit.
#
#   scripts/ha/down.sh DIR
set -uo pipefail
dir="${1:?usage: down.sh DIR (the folder scripts/ha/up.sh printed as WEFT_HA_DIR)}"
[ -d "$dir" ] || exit 0
dir="$(cd "$dir" && pwd)"
case "$dir" in /|/tmp|/var|/home|/root|/usr|/etc) echo "weft-ha: refusing to remove $dir" >&2; exit 1 ;; esac

ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$dir"; }
pid_of() { [ -f "$dir/$1.pid" ] && cat "$dir/$1.pid"; }
postmasters() { for d in "$dir"/pg*/data; do [ -f "$d/postmaster.pid" ] && head -n1 "$d/postmaster.pid"; done; }
# stop SIGNAL PID...: signals those of PIDs that are ours.
signal() { local sig=$1; shift; for p in "$@"; do [ -n "$p" ] && ours "$p" && kill "-$sig" "$p" 2>/dev/null; done; return 0; }
# wait_gone SECONDS PID...: until none of PIDs is ours any more.
wait_gone() {
  local deadline=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $deadline ]; do
    local left=0
    for p in "$@"; do [ -n "$p" ] && ours "$p" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.2
  done
  return 1
}

haproxy=$(pid_of haproxy)
patronis=$(for n in 1 2 3; do pid_of "patroni$n"; done)
etcds=$(for n in 1 2 3; do pid_of "etcd$n"; done)
signal TERM $haproxy
# The folder goes with everything in it, so nothing needs Patroni's graceful stop (where a synchronous standby waits
# for a primary that is stopping too to release it): Patroni is killed, then each PostgreSQL gets a fast shutdown
# (SIGINT), and whatever is left after 10 s is killed with its process group (backends included).
signal KILL $patronis
wait_gone 5 $patronis || true
signal INT $(postmasters)
wait_gone 10 $(postmasters) || true
signal KILL $haproxy
for p in $(postmasters); do
  if ours "$p"; then
    pgid=$(ps -o pgid= -p "$p" | tr -d ' ')
    kill -KILL "$p" 2>/dev/null
    [ -n "$pgid" ] && [ "$pgid" != "$(ps -o pgid= -p $$ | tr -d ' ')" ] && kill -KILL -- "-$pgid" 2>/dev/null
  fi
done
signal TERM $etcds
# (A member that leads hands its leadership over before it stops, which its stopping peers make slow: 2 s at most.)
wait_gone 2 $etcds || signal KILL $etcds
wait_gone 10 $haproxy $patronis $etcds $(postmasters) || { echo "weft-ha: processes of $dir still running" >&2; exit 1; }
rm -rf "$dir"
