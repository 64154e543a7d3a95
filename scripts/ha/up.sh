#!/usr/bin/env bash
# Starts a highly available PostgreSQL on this machine, for tests and for trying Weft on it (docs/ha-postgresql.md):
# three etcd members (Debian's etcd-server), three PostgreSQL 15 members (Debian's postgresql-15) each run by Patroni
# (Debian's patroni) with synchronous replication, and HAProxy (Debian's haproxy) in front, sending connections to
# whichever member Patroni's REST API calls the primary. Everything listens on 127.0.0.1 only, on free ports, and lives
# in one folder (default: a new /tmp/weft-ha-XXXXXX) whose name is the run's prefix (etcd cluster token, Patroni scope).
# As root, every process runs as the unprivileged user `postgres` (PostgreSQL refuses to run as root).
#
#   scripts/ha/up.sh [--dir DIR] [--strict]      --strict: synchronous_mode_strict (no commit without a standby)
#
# Once the primary and both standbys (one synchronous) are up, it creates the roles `weft` (owner) and `weft_app`
# (the services') and the database `weft`, writes DIR/env (DATABASE_URL, WEFT_MIGRATION_DATABASE_URL,
# WEFT_HA_SUPERUSER_URL, WEFT_HA_REPLICAS_URL, WEFT_HA_DIR, WEFT_HA_SOCKET_ENV and the members' ports), prints it, and
# exits; the processes keep running. DIR/socket.env holds DATABASE_URL and WEFT_MIGRATION_DATABASE_URL through
# HAProxy's unix socket, for a control plane in another network namespace (weft cluster up --control-plane-env). scripts/ha/down.sh DIR stops all of them and removes DIR; a failed start does that itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="" strict=false
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --strict) strict=true; shift ;;
    *) echo "weft-ha: unknown argument $1 (usage: up.sh [--dir DIR] [--strict])" >&2; exit 2 ;;
  esac
done
PG_BIN=/usr/lib/postgresql/15/bin
for need in "$PG_BIN/postgres:postgresql-15" "/usr/bin/patroni:patroni" "/usr/bin/etcd:etcd-server" "/usr/sbin/haproxy:haproxy" "/usr/bin/psql:postgresql-client-15" "/usr/bin/python3:python3"; do
  [ -x "${need%%:*}" ] || { echo "weft-ha: needs ${need%%:*} (Debian package ${need#*:}; scripts/install-deps.sh installs it as root)" >&2; exit 1; }
done
run_as=()
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || { echo "weft-ha: running as root needs the user postgres (made by Debian's postgresql-common)" >&2; exit 1; }
  run_as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
if [ -z "$dir" ]; then dir="$(mktemp -d /tmp/weft-ha-XXXXXX)"; else mkdir -p "$dir"; fi
dir="$(cd "$dir" && pwd)"
prefix="$(basename "$dir" | tr -c 'A-Za-z0-9_\n-' '-')"
[ -z "$(ls -A "$dir")" ] || { echo "weft-ha: $dir is not empty" >&2; exit 1; }
chmod 0700 "$dir"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
trap 'status=$?; if [ $status -ne 0 ]; then echo "weft-ha: start failed; logs:" >&2; for f in "$dir"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done; "$here/down.sh" "$dir" >&2 || true; fi' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# 14 distinct free ports on 127.0.0.1 (held open together, so they differ).
read -r -a ports <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(14)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
etcd_client=("${ports[@]:0:3}") etcd_peer=("${ports[@]:3:3}") pg_port=("${ports[@]:6:3}") api_port=("${ports[@]:9:3}")
proxy_port=${ports[12]} proxy_replicas_port=${ports[13]}
secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
super_pw=$(secret) repl_pw=$(secret) owner_pw=$(secret) app_pw=$(secret)

# launch NAME CMD...: runs CMD in a session of its own (its pid is its process group), output in DIR/NAME.log.
launch() {
  local name=$1; shift
  ( cd "$dir" && exec setsid "${run_as[@]}" env HOME="$dir" "$@" >"$dir/$name.log" 2>&1 </dev/null ) &
  echo $! >"$dir/$name.pid"
}
http_status() { python3 -c '
import sys, urllib.request, urllib.error
try: print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e: print(e.code)
except Exception: print(0)' "$1"; }
wait_for() { # wait_for SECONDS WHAT COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "weft-ha: $what not ready after ${deadline}s" >&2; return 1; }
    sleep 0.3
  done
}

cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:${etcd_peer[$i]}"; done
for i in 0 1 2; do
  n=$((i + 1))
  launch "etcd$n" /usr/bin/etcd --name "e$n" --data-dir "$dir/etcd$n" \
    --listen-client-urls "http://127.0.0.1:${etcd_client[$i]}" --advertise-client-urls "http://127.0.0.1:${etcd_client[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${etcd_peer[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-token "$prefix" --initial-cluster-state new
done
etcd_healthy() { [ "$(http_status "http://127.0.0.1:${etcd_client[0]}/health")" = 200 ]; }
wait_for 30 etcd etcd_healthy

etcd_hosts="127.0.0.1:${etcd_client[0]},127.0.0.1:${etcd_client[1]},127.0.0.1:${etcd_client[2]}"
for i in 0 1 2; do
  n=$((i + 1))
  mkdir -p "$dir/pg$n"
  cat >"$dir/pg$n.yml" <<YAML
scope: $prefix
namespace: /weft-ha/
name: pg$n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${api_port[$i]}
  connect_address: 127.0.0.1:${api_port[$i]}
etcd3:
  hosts: $etcd_hosts
bootstrap:
  dcs:
    # A leader that stops renewing loses its key after ttl seconds; Patroni checks every loop_wait seconds.
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    # A crashed primary is not restarted in place: the synchronous standby takes over at once.
    primary_start_timeout: 0
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_mode_strict: $strict
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 300
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        synchronous_commit: "on"
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 127.0.0.1:${pg_port[$i]}
  connect_address: 127.0.0.1:${pg_port[$i]}
  data_dir: $dir/pg$n/data
  bin_dir: $PG_BIN
  pgpass: $dir/pg$n/pgpass
  authentication:
    superuser: {username: postgres, password: $super_pw}
    replication: {username: replicator, password: $repl_pw}
    rewind: {username: postgres, password: $super_pw}
  parameters:
    unix_socket_directories: $dir/pg$n
    logging_collector: "on"
    log_directory: $dir/pg$n
    log_filename: postgresql.log
  pg_hba:
    - local all all scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256
YAML
  chmod 0600 "$dir/pg$n.yml"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir/pg$n" "$dir/pg$n.yml"
  launch "patroni$n" /usr/bin/patroni "$dir/pg$n.yml"
done

cat >"$dir/haproxy.cfg" <<CFG
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 2s
  # Weft's sessions may sit idle (the LISTEN session, pooled sessions): long idle timeouts; TCP keepalive finds the dead.
  timeout client 1h
  timeout server 1h
  timeout check 1s
  option clitcpka
  option srvtcpka
# Read-write: only the member whose Patroni answers 200 on /primary. When it goes down, its sessions are cut at once.
# Also on a unix socket named as PostgreSQL names its own (DIR/proxy/.s.PGSQL.PORT), for a client in another network
# namespace of this machine (the local cluster's control plane): socket.env.
listen primary
  bind 127.0.0.1:$proxy_port
  bind unix@$dir/proxy/.s.PGSQL.$proxy_port mode 600
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
$(for i in 0 1 2; do echo "  server pg$((i + 1)) 127.0.0.1:${pg_port[$i]} maxconn 300 check port ${api_port[$i]}"; done)
# Read-only: the standbys (/replica), for reads that may lag.
listen replicas
  bind 127.0.0.1:$proxy_replicas_port
  balance roundrobin
  option httpchk GET /replica
  http-check expect status 200
  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
$(for i in 0 1 2; do echo "  server pg$((i + 1)) 127.0.0.1:${pg_port[$i]} maxconn 300 check port ${api_port[$i]}"; done)
CFG
mkdir -m 0700 "$dir/proxy"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$dir/haproxy.cfg" "$dir/proxy"
launch haproxy /usr/sbin/haproxy -db -f "$dir/haproxy.cfg"

# Ready: one primary, one synchronous standby, one more standby streaming.
all_members_up() {
  local primary=0 sync=0 replica=0
  for i in 0 1 2; do
    [ "$(http_status "http://127.0.0.1:${api_port[$i]}/primary")" = 200 ] && primary=$((primary + 1))
    [ "$(http_status "http://127.0.0.1:${api_port[$i]}/sync")" = 200 ] && sync=$((sync + 1))
    [ "$(http_status "http://127.0.0.1:${api_port[$i]}/replica?lag=1MB")" = 200 ] && replica=$((replica + 1))
  done
  [ $primary = 1 ] && [ $sync = 1 ] && [ $replica = 2 ]
}
wait_for 120 "Patroni (one primary, a synchronous and a second standby)" all_members_up
super_url="postgres://postgres:$super_pw@127.0.0.1:$proxy_port/postgres"
proxy_answers() { psql "$super_url" -XAtqc 'SELECT NOT pg_is_in_recovery()' 2>/dev/null | grep -qx t; }
wait_for 30 "HAProxy to the primary" proxy_answers
psql "$super_url" -Xq -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE weft LOGIN PASSWORD '$owner_pw';
CREATE ROLE weft_app LOGIN PASSWORD '$app_pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
CREATE DATABASE weft OWNER weft;
REVOKE ALL ON DATABASE weft FROM PUBLIC;
GRANT CONNECT ON DATABASE weft TO weft_app;
SQL

cat >"$dir/env" <<ENV
WEFT_HA_DIR=$dir
DATABASE_URL=postgres://weft_app:$app_pw@127.0.0.1:$proxy_port/weft
WEFT_MIGRATION_DATABASE_URL=postgres://weft:$owner_pw@127.0.0.1:$proxy_port/weft
WEFT_HA_SUPERUSER_URL=$super_url
WEFT_HA_REPLICAS_URL=postgres://weft_app:$app_pw@127.0.0.1:$proxy_replicas_port/weft
WEFT_HA_ETCD=$etcd_hosts
WEFT_HA_PATRONI_PORTS=${api_port[0]},${api_port[1]},${api_port[2]}
WEFT_HA_POSTGRES_PORTS=${pg_port[0]},${pg_port[1]},${pg_port[2]}
ENV
chmod 0600 "$dir/env"
# The same roles through HAProxy's unix socket (the host part of the URL is the socket's folder, percent-encoded).
socket_host=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$dir/proxy")
cat >"$dir/socket.env" <<ENV
DATABASE_URL=postgres://weft_app:$app_pw@$socket_host:$proxy_port/weft
WEFT_MIGRATION_DATABASE_URL=postgres://weft:$owner_pw@$socket_host:$proxy_port/weft
ENV
chmod 0600 "$dir/socket.env"
echo "WEFT_HA_SOCKET_ENV=$dir/socket.env" >>"$dir/env"
cat "$dir/env"
