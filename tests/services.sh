#!/bin/sh
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432 and
# Redis on 127.0.0.1:6379 (`make test` runs this first via `make services`).
#
# Starting them may fail (not root, not installed): that is reported, not fatal.
# The service tests then skip with the reason, or fail under CI=true
# (tests/pg.py: "Under CI=true, a skipped service test is a failure").

PGHOST=127.0.0.1
PGPORT=5432

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1; then
    echo "services: PostgreSQL client tools not installed; PostgreSQL tests will skip (fail under CI=true)"
elif pg_up; then
    echo "services: PostgreSQL is up on $PGHOST:$PGPORT"
else
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        for version in $(ls /etc/postgresql); do
            echo "services: starting PostgreSQL $version/main"
            pg_ctlcluster --skip-systemctl-redirect "$version" main start \
                || echo "services: could not start PostgreSQL $version/main (not root?)"
        done
    else
        echo "services: no PostgreSQL cluster to start (pg_ctlcluster or /etc/postgresql missing)"
    fi
    if pg_up; then
        echo "services: PostgreSQL is up on $PGHOST:$PGPORT"
    else
        echo "services: PostgreSQL is still down; PostgreSQL tests will skip (fail under CI=true)"
    fi
fi

# The tests connect to database "test" (as root, else postgres); create it if missing.
if command -v psql >/dev/null 2>&1 && pg_up; then
    for user in "$(id -un)" postgres; do
        has=$(psql -h "$PGHOST" -p "$PGPORT" -U "$user" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null) || continue
        if [ "$has" != "1" ]; then
            createdb -h "$PGHOST" -p "$PGPORT" -U "$user" test \
                && echo "services: created database 'test' as $user"
        fi
        break
    done
fi

if ! command -v redis-cli >/dev/null 2>&1; then
    echo "services: redis-cli not installed; Redis tests will skip (fail under CI=true)"
elif redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "services: Redis is up on 127.0.0.1:6379"
elif command -v redis-server >/dev/null 2>&1 \
    && redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" >/dev/null; then
    tries=0  # the daemon forks before it listens: poll briefly for the first PONG
    until redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || [ $tries -ge 50 ]; do
        tries=$((tries + 1))
        sleep 0.1
    done
    echo "services: started Redis on 127.0.0.1:6379"
else
    echo "services: could not start Redis; Redis tests will skip (fail under CI=true)"
fi

exit 0
