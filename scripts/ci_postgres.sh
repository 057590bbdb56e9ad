#!/usr/bin/env bash
# A real PostgreSQL on loopback for the distributed Optuna test (tests/test_distributed.py).
#
# Run as root on Debian. Installs the `postgresql` package when missing, starts a cluster
# listening on 127.0.0.1 only, creates the role and database `vitdsi` (idempotent: safe to
# run again), and prints ONE line on stdout for the caller to eval:
#
#     eval "$(bash scripts/ci_postgres.sh)"      # sets VITDSI_TEST_POSTGRES_URL
#
# Everything else goes to stderr. Settings: PGPORT (default 5432), VITDSI_PG_USER,
# VITDSI_PG_PASSWORD, VITDSI_PG_DB (default vitdsi / vitdsi / vitdsi_test).
set -euo pipefail

PORT="${PGPORT:-5432}"
USER_NAME="${VITDSI_PG_USER:-vitdsi}"
PASSWORD="${VITDSI_PG_PASSWORD:-vitdsi}"
DB_NAME="${VITDSI_PG_DB:-vitdsi_test}"

log() { echo "ci_postgres: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "run as root (it installs and starts PostgreSQL)"
  exit 1
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
fi

VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
CLUSTER=main
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION $CLUSTER"; then
  log "creating cluster $VERSION/$CLUSTER"
  pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" >&2
fi
CONF_DIR="/etc/postgresql/$VERSION/$CLUSTER"
# loopback only, on the chosen port (Debian's postgresql.conf reads conf.d/ last)
mkdir -p "$CONF_DIR/conf.d"
printf "listen_addresses = '127.0.0.1'\nport = %s\n" "$PORT" >"$CONF_DIR/conf.d/vitdsi.conf"

STATUS="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}')"
if [ "$STATUS" != "online" ]; then
  log "starting cluster $VERSION/$CLUSTER on 127.0.0.1:$PORT"
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

# wait until it accepts connections
for _ in $(seq 1 60); do
  if su postgres -c "psql -p $PORT -h 127.0.0.1 -tAc 'select 1'" >/dev/null 2>&1 \
     || su postgres -c "psql -p $PORT -tAc 'select 1'" >/dev/null 2>&1; then
    break
  fi
  sleep 1
done

psql_admin() { su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -tAc \"$1\"" >&2; }

if [ -z "$(su postgres -c "psql -p $PORT -tAc \"select 1 from pg_roles where rolname='$USER_NAME'\"")" ]; then
  log "creating role $USER_NAME"
  psql_admin "create role $USER_NAME login password '$PASSWORD'"
else
  psql_admin "alter role $USER_NAME login password '$PASSWORD'"
fi
if [ -z "$(su postgres -c "psql -p $PORT -tAc \"select 1 from pg_database where datname='$DB_NAME'\"")" ]; then
  log "creating database $DB_NAME"
  psql_admin "create database $DB_NAME owner $USER_NAME"
fi
grep -q "^host *$DB_NAME *$USER_NAME *127.0.0.1/32" "$CONF_DIR/pg_hba.conf" || {
  echo "host $DB_NAME $USER_NAME 127.0.0.1/32 scram-sha-256" >>"$CONF_DIR/pg_hba.conf"
  pg_ctlcluster "$VERSION" "$CLUSTER" reload >&2
}

echo "export VITDSI_TEST_POSTGRES_URL=postgresql://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB_NAME"
