# Shared set-up for scripts/run.sh and scripts/test.sh: a virtual environment and the services.
# Everything a fresh Debian/Ubuntu machine with Python 3.11 needs is installed from here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DERMATRIAGE_VENV:-$ROOT/.venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\033[1m[dermatriage]\033[0m %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; return 1; fi
}

_apt_updated=""
apt_install() {
    command -v apt-get >/dev/null || { say "apt-get not found; install $* by hand"; return 1; }
    if [ -z "$_apt_updated" ]; then as_root apt-get update -qq; _apt_updated=1; fi
    say "installing $* with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "$candidate"; return
        fi
    done
    say "Python 3.11 is required"; return 1
}

# setup_venv EXTRAS: create the venv and install the project with those extras (e.g. "cpu,test").
# Reinstalls only when pyproject.toml or the extras change.
setup_venv() {
    local extras="$1" py stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        py="$(find_python)"
        "$py" -m venv "$VENV" 2>/dev/null || { apt_install python3.11-venv || apt_install python3-venv; "$py" -m venv "$VENV"; }
    fi
    # The stamp names the pyproject.toml it installed and one installed extra per line, so the
    # test script's larger set also satisfies the run script.
    stamp="$VENV/.dermatriage-installed"
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    local missing="" extra
    [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$hash" ] || { rm -f "$stamp"; missing=1; }
    for extra in ${extras//,/ }; do
        [ -f "$stamp" ] && grep -qxF "$extra" "$stamp" || missing=1
    done
    if [ -n "$missing" ]; then
        say "installing Python packages ($extras)"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
        { echo "$hash"; tr ',' '\n' <<<"$extras"; } > "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}

ensure_redis_server_binary() {
    command -v redis-server >/dev/null || apt_install redis-server
}

redis_ping() { "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()
PY
}

# Whether something already answers at host:port (bash's own /dev/tcp; one second at most).
port_taken() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# ensure_redis URL: use a running Redis, else start a local one (only for a local URL).
ensure_redis() {
    local url="$1" port
    if redis_ping "$url"; then return; fi
    case "$url" in
        redis://127.0.0.1*|redis://localhost*) ;;
        *) say "Redis at $url is not reachable"; return 1 ;;
    esac
    port="$(echo "$url" | sed -E 's#redis://[^:/]+:?([0-9]*).*#\1#')"; port="${port:-6379}"
    ensure_redis_server_binary
    mkdir -p "$ROOT/var/redis"
    say "starting redis-server on port $port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$ROOT/var/redis" \
        --appendonly yes --maxmemory-policy noeviction --logfile "$ROOT/var/redis/redis.log"
    for _ in $(seq 50); do redis_ping "$url" && return; sleep 0.2; done
    say "redis-server did not come up"; return 1
}

pg_ping() { "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys
from sqlalchemy import create_engine, text
with create_engine(sys.argv[1]).connect() as c:
    c.execute(text("select 1"))
PY
}

# ensure_postgres_binaries: initdb and pg_ctl, for the private clusters the suite (and this file) start.
ensure_postgres_binaries() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
}

# ensure_postgres: export DERMATRIAGE_TEST_POSTGRES_URL pointing at a reachable server, starting
# the machine's cluster, or a private one (installing PostgreSQL) when there is none.
ensure_postgres() {
    local url="${DERMATRIAGE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
    if pg_ping "$url"; then export DERMATRIAGE_TEST_POSTGRES_URL="$url"; return; fi
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        local version; version="$(ls /etc/postgresql | sort -V | tail -1)"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
        sleep 2
        if pg_ping "$url"; then export DERMATRIAGE_TEST_POSTGRES_URL="$url"; return; fi
    fi
    ensure_postgres_binaries
    local bindir dir port=55432
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    dir="/tmp/dermatriage-pg-$port"
    url="postgresql+psycopg://postgres@127.0.0.1:$port/test"
    if ! pg_ping "$url"; then
        say "starting a private PostgreSQL on port $port"
        local run=(); [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
        if [ ! -f "$dir/PG_VERSION" ]; then
            mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres "$dir"
            "${run[@]}" "$bindir/initdb" -D "$dir" -A trust -U postgres >/dev/null
        fi
        "${run[@]}" "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
            -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
        "${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test 2>/dev/null || true
    fi
    pg_ping "$url" || { say "PostgreSQL is not reachable"; return 1; }
    export DERMATRIAGE_TEST_POSTGRES_URL="$url"
}

ensure_chromium() {
    command -v chromium >/dev/null || apt_install chromium
}
