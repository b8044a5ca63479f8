#!/usr/bin/env bash
# Makes sure the database servers the tests use are running on 127.0.0.1
# (PostgreSQL :5432 trust auth, MariaDB :3306 root without password, Redis
# :6379 for KSR.ndb_redis).
# On the project's machines they are started before a session; this starts
# them again if they were stopped.
set -uo pipefail

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
my_up() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }
rd_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! my_up && [ -x /usr/sbin/mariadbd ]; then
  echo "services: starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
if ! rd_up && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/redis-sipshard-tests.log || true
fi
for _ in $(seq 1 60); do
  if pg_up && my_up && rd_up; then exit 0; fi
  sleep 0.5
done
pg_up || echo "services: PostgreSQL is not reachable on 127.0.0.1:5432" >&2
my_up || echo "services: MariaDB is not reachable on 127.0.0.1:3306" >&2
rd_up || echo "services: Redis is not reachable on 127.0.0.1:6379" >&2
exit 1
