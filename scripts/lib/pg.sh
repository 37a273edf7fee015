# shellcheck shell=bash disable=SC2034  # ATLASIA_PG_* are read by the sourcing scripts
# scripts/lib/pg.sh — start and stop a throwaway PostgreSQL cluster.
#
# Sourced (not executed) by scripts/test and bench/api. The cluster lives in a
# fresh temp dir, listens on 127.0.0.1 on a free port (unix socket inside the
# temp dir), runs with fsync off and max_connections=300, and trusts every
# local connection. Usage:
#
#   source scripts/lib/pg.sh
#   trap pg_stop_cluster EXIT
#   pg_start_cluster            # sets ATLASIA_PG_PORT, ATLASIA_PG_URL, ...
#   pg_create_database atlasia  # optional
#   pg_stop_cluster             # idempotent; stops the server, removes the dir
#
# PostgreSQL refuses to run as root: as root the server runs as the `postgres`
# system user, or as a system user `atlasia-pg` created on first use when there
# is no `postgres` user. As a non-root user it runs as that user.
#
# Knobs: ATLASIA_PGBIN (server binaries; default /usr/lib/postgresql/15/bin),
# ATLASIA_PG_TMPROOT (parent of the temp dir; default /tmp, which every user
# can traverse and which keeps the unix socket path short).

if [[ -z "${ATLASIA_PGBIN:-}" ]]; then
  ATLASIA_PGBIN=/usr/lib/postgresql/15/bin
  if [[ ! -x "$ATLASIA_PGBIN/initdb" ]]; then
    # Another Debian release may ship another major version: use the newest.
    _pg_candidate=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    if [[ -x $_pg_candidate ]]; then
      ATLASIA_PGBIN=${_pg_candidate%/initdb}
    fi
    unset _pg_candidate
  fi
fi

ATLASIA_PG_DIR=""     # temp dir of the running cluster; "" when none
ATLASIA_PG_PORT=""    # TCP port on 127.0.0.1
ATLASIA_PG_OS_USER="" # OS user the server runs as
ATLASIA_PG_URL=""     # admin URL: postgres://postgres@127.0.0.1:PORT/postgres

# True when the server binaries are installed.
pg_have_binaries() {
  [[ -x "$ATLASIA_PGBIN/initdb" && -x "$ATLASIA_PGBIN/pg_ctl" ]]
}

# The one-line message for a machine without PostgreSQL.
pg_missing_message() {
  echo "error: PostgreSQL server binaries not found ($ATLASIA_PGBIN/initdb); run .ci/run, or: apt-get install -y postgresql" >&2
}

# Print a TCP port on 127.0.0.1 that is free right now.
pg_free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
  else
    # No python3: a random high port; pg_start_cluster retries on a clash.
    echo $((20000 + RANDOM % 30000))
  fi
}

# Print the OS user the server will run as, creating `atlasia-pg` if needed.
_pg_os_user() {
  if [[ $EUID -ne 0 ]]; then
    id -un
  elif id -u postgres >/dev/null 2>&1; then
    echo postgres
  else
    if ! id -u atlasia-pg >/dev/null 2>&1; then
      useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin atlasia-pg >&2
    fi
    echo atlasia-pg
  fi
}

# Run a command as the cluster's OS user, from inside the cluster dir (the
# caller's cwd may not be readable by that user).
_pg_run() {
  if [[ $EUID -ne 0 ]]; then
    (cd "$ATLASIA_PG_DIR" && "$@")
  elif command -v runuser >/dev/null 2>&1; then
    (cd "$ATLASIA_PG_DIR" && runuser -u "$ATLASIA_PG_OS_USER" -- "$@")
  else
    (cd "$ATLASIA_PG_DIR" && su -s /bin/sh "$ATLASIA_PG_OS_USER" -c "$(printf '%q ' "$@")")
  fi
}

# True while process $1 exists and is not a zombie.
_pg_alive() {
  local stat state
  IFS= read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  state=${stat##*) }   # the field after "(comm)"
  state=${state%% *}
  [[ -n $state && $state != Z ]]
}

# Create the cluster and start it. On success sets ATLASIA_PG_DIR,
# ATLASIA_PG_PORT, ATLASIA_PG_OS_USER and ATLASIA_PG_URL and returns 0; on
# failure prints the logs, removes everything and returns 1.
pg_start_cluster() {
  if ! pg_have_binaries; then
    pg_missing_message
    return 1
  fi
  if [[ -n $ATLASIA_PG_DIR ]]; then
    echo "pg.sh: a cluster is already running in $ATLASIA_PG_DIR" >&2
    return 1
  fi

  ATLASIA_PG_OS_USER=$(_pg_os_user) || return 1
  ATLASIA_PG_DIR=$(mktemp -d "${ATLASIA_PG_TMPROOT:-/tmp}/atlasia-pg.XXXXXX") || return 1
  chmod 700 "$ATLASIA_PG_DIR"
  if [[ $EUID -eq 0 ]]; then
    chown "$ATLASIA_PG_OS_USER:" "$ATLASIA_PG_DIR"
  fi

  if ! _pg_run "$ATLASIA_PGBIN/initdb" -D "$ATLASIA_PG_DIR/data" -U postgres \
    -A trust -E UTF8 --no-locale --no-instructions >"$ATLASIA_PG_DIR/initdb.log" 2>&1; then
    echo "pg.sh: initdb failed:" >&2
    cat "$ATLASIA_PG_DIR/initdb.log" >&2 || true
    pg_stop_cluster
    return 1
  fi

  local attempt port
  for attempt in 1 2 3; do
    port=$(pg_free_port)
    # pg_ctl hands -o to a shell, hence the single quotes around the path.
    if _pg_run "$ATLASIA_PGBIN/pg_ctl" -D "$ATLASIA_PG_DIR/data" -l "$ATLASIA_PG_DIR/server.log" \
      -w -t 60 -o "-c listen_addresses=127.0.0.1 -p $port -k '$ATLASIA_PG_DIR' -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >"$ATLASIA_PG_DIR/pg_ctl.log" 2>&1; then
      ATLASIA_PG_PORT=$port
      ATLASIA_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
    echo "pg.sh: PostgreSQL did not start on port $port (attempt $attempt of 3):" >&2
    tail -n 20 "$ATLASIA_PG_DIR/pg_ctl.log" "$ATLASIA_PG_DIR/server.log" >&2 2>/dev/null || true
    _pg_stop_server
  done
  pg_stop_cluster
  return 1
}

# Stop the server of the current cluster, if one runs (fast shutdown: SIGINT
# to the postmaster, then SIGQUIT/SIGKILL if it is still there after 30 s).
_pg_stop_server() {
  local pidfile="$ATLASIA_PG_DIR/data/postmaster.pid" pid i
  [[ -f $pidfile ]] || return 0
  pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  _pg_alive "$pid" || return 0
  kill -INT "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    _pg_alive "$pid" || return 0
    sleep 0.05
  done
  echo "pg.sh: postmaster $pid ignored SIGINT for 30 s; killing it" >&2
  kill -QUIT "$pid" 2>/dev/null || true
  sleep 1
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    _pg_alive "$pid" || return 0
    sleep 0.05
  done
}

# Stop the cluster and remove its temp dir. Safe to call twice, or when no
# cluster was started; never fails (meant for EXIT traps).
pg_stop_cluster() {
  [[ -n ${ATLASIA_PG_DIR:-} ]] || return 0
  _pg_stop_server || true
  rm -rf -- "$ATLASIA_PG_DIR" || true
  ATLASIA_PG_DIR=""
  ATLASIA_PG_PORT=""
  ATLASIA_PG_URL=""
  return 0
}

# Create database $1 in the running cluster.
pg_create_database() {
  local psql="$ATLASIA_PGBIN/psql"
  [[ -x $psql ]] || psql=psql
  "$psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$ATLASIA_PG_PORT" -U postgres -d postgres \
    -c "CREATE DATABASE \"$1\""
}
