#!/bin/sh
# Make sure the PostgreSQL that the PostgreSQL test run uses answers (CONTROLPLANE_TEST_PG_URL,
# default postgresql://postgres@127.0.0.1:5432/postgres). Starts the machine's Debian cluster when
# it is installed but stopped; otherwise explains what is missing and fails.
set -eu
url="${CONTROLPLANE_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
py="${PYTHON:-.venv/bin/python}"
check() {
  "$py" - "$url" <<'PY'
import sys, psycopg2
try:
    psycopg2.connect(sys.argv[1], connect_timeout=3).close()
except Exception as exc:
    print(f"  {exc}".strip(), file=sys.stderr)
    sys.exit(1)
PY
}
if check 2>/dev/null; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    echo "ensure-postgres: starting PostgreSQL $version (cluster main)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if check 2>/dev/null; then exit 0; fi
    sleep 1
  done
fi
echo "ensure-postgres: no PostgreSQL answers at $url." >&2
echo "  Install and start one (Debian: apt-get install postgresql; trust auth on 127.0.0.1), or point" >&2
echo "  CONTROLPLANE_TEST_PG_URL at one, or run only the SQLite suite: make test-sqlite" >&2
check || true
exit 1
