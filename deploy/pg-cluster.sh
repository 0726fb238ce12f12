#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (never for production).
#
#   deploy/pg-cluster.sh start DIR   initdb into DIR/data (if not there yet),
#                                    start it, create the test role and
#                                    database; prints the conninfo
#   deploy/pg-cluster.sh stop DIR    stop it (fast shutdown), wait until the
#                                    server has exited
#
# The server listens only on a Unix socket in DIR (listen_addresses = ''),
# keeps fsync on, and runs as an unprivileged user: PostgreSQL refuses to
# run as root, so under root (CI) it runs as the system user keywarden-test,
# created if missing, and DIR is handed to that user. DIR is mode 0700, so
# only that user and root reach the socket. Local connections are trusted,
# except for members of role kw_password_users, who must give their password
# (SCRAM): the tests of password authentication make such roles.
# The printed conninfo names role keywarden_test (CREATEDB CREATEROLE, not a
# superuser) and database keywarden_test; the tests create and drop their
# own databases (and roles) through it (tests/pg_test_util.h).
#
# Environment: KEYWARDEN_PG_BIN (default: the newest /usr/lib/postgresql/*/bin),
# KEYWARDEN_PG_PORT (default 5432; names the socket file only).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
case "$2" in
  /*) dir=$2 ;;
  *) dir=$(pwd)/$2 ;;
esac
dir=${dir%/}
port=${KEYWARDEN_PG_PORT:-5432}
role=keywarden_test
db=keywarden_test

bin=${KEYWARDEN_PG_BIN:-}
if [ -z "$bin" ]; then
  for candidate in /usr/lib/postgresql/*/bin; do
    [ -x "$candidate/pg_ctl" ] || continue
    if [ -z "$bin" ] || [ "$(printf '%s\n%s\n' "$bin" "$candidate" | sort -V | tail -n 1)" = "$candidate" ]; then
      bin=$candidate
    fi
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
  echo "pg-cluster: PostgreSQL server binaries not found (install postgresql-15, or set KEYWARDEN_PG_BIN)" >&2
  exit 1
fi

# The socket path (DIR/.s.PGSQL.PORT) must fit in sockaddr_un (107 bytes).
if [ $((${#dir} + 20)) -gt 107 ]; then
  echo "pg-cluster: $dir is too long for a Unix socket path; use a shorter directory" >&2
  exit 1
fi

# Runs a command as the cluster's owner.
if [ "$(id -u)" -eq 0 ]; then
  owner=keywarden-test
  as_owner() { runuser -u "$owner" -- "$@"; }
else
  owner=$(id -un)
  as_owner() { "$@"; }
fi

ensure_owner() {
  [ "$(id -u)" -eq 0 ] || return 0
  if ! id -u "$owner" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --user-group "$owner"
  fi
}

conninfo() {
  echo "host=$dir port=$port user=$role dbname=$db"
}

# Runs the SQL on stdin as the cluster's superuser.
psql_admin() {
  as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres
}

start() {
  ensure_owner
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$owner:" "$dir"
    # The owner must reach DIR: every parent searchable by others.
    if ! as_owner test -x "$dir"; then
      echo "pg-cluster: user $owner cannot reach $dir (a parent directory is not searchable)" >&2
      exit 1
    fi
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=reject \
      -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
    # First match wins: password roles before the trust line.
    as_owner sed -i '1i local all +kw_password_users scram-sha-256' "$dir/data/pg_hba.conf"
    cat >>"$dir/data/postgresql.conf" <<EOF
# deploy/pg-cluster.sh
listen_addresses = ''
unix_socket_directories = '$dir'
unix_socket_permissions = 0700
port = $port
fsync = on
synchronous_commit = on
max_connections = 100
shared_buffers = 32MB
log_min_messages = warning
log_connections = off
EOF
  fi
  if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    echo "pg-cluster: already running in $dir" >&2
  else
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null || {
      echo "pg-cluster: the server did not start; its log:" >&2
      tail -n 30 "$dir/postgres.log" >&2 || true
      exit 1
    }
  fi
  # pg_ctl -w waits for the server to accept connections; make sure of it.
  for _ in $(seq 1 60); do
    if as_owner "$bin/pg_isready" -q -h "$dir" -p "$port"; then break; fi
    sleep 0.5
  done
  as_owner "$bin/pg_isready" -q -h "$dir" -p "$port" || {
    echo "pg-cluster: the server does not accept connections" >&2
    exit 1
  }
  psql_admin <<EOF
SELECT 'CREATE ROLE $role LOGIN CREATEDB CREATEROLE'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$role') \gexec
SELECT 'CREATE ROLE kw_password_users NOLOGIN'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kw_password_users') \gexec
SELECT 'CREATE DATABASE $db OWNER $role'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$db') \gexec
EOF
  conninfo
}

stop() {
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    echo "pg-cluster: no cluster in $dir" >&2
    return 0
  fi
  if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  fi
  # pg_ctl -w returns once postmaster.pid is gone; no server process may be left.
  if [ -f "$dir/data/postmaster.pid" ]; then
    echo "pg-cluster: the server in $dir did not stop" >&2
    exit 1
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
