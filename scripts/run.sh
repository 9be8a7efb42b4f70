#!/usr/bin/env bash
# Start the whole system on embedded defaults: web (gunicorn), worker (model in memory), the scheduler
# (Celery beat: sends the reconcile job) and Flower. Worker, scheduler and Flower are restarted whenever
# they exit; gunicorn restarts its own workers.
# Ctrl-C stops everything this script started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
setup_venv "cpu"
eval "$("$VENV/bin/python" -m scripts.cli env)"  # resolved settings: REDIS_URL, ports, model path
# A second copy on the same ports would start a second worker and a second scheduler before its portal
# failed to bind: stop before anything starts.
export DERMATRIAGE_WORKER_METRICS_PORT="${DERMATRIAGE_WORKER_METRICS_PORT:-9808}"
for taken in "$DERMATRIAGE_WEB_HOST:$DERMATRIAGE_WEB_PORT" "127.0.0.1:$DERMATRIAGE_FLOWER_PORT" \
             "127.0.0.1:$DERMATRIAGE_WORKER_METRICS_PORT"; do
    if port_taken "${taken%:*}" "${taken##*:}"; then
        say "$taken is already in use: is DermaTriage already running? (dermatriage status)" \
            "Stop it, or set DERMATRIAGE_WEB_PORT, DERMATRIAGE_FLOWER_PORT and DERMATRIAGE_WORKER_METRICS_PORT."
        exit 1
    fi
done
ensure_redis "$REDIS_URL"
"$VENV/bin/python" -m scripts.cli migrate
"$VENV/bin/python" -m scripts.cli ensure-model
"$VENV/bin/python" -m scripts.cli ensure-secret-key  # random, owner-only, under the data dir; reused
if [ -z "${DERMATRIAGE_FLOWER_PASSWORD:-}" ]; then
    DERMATRIAGE_FLOWER_PASSWORD="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(12))')"
fi
mkdir -p var/log
pids=()
stop() {
    trap - INT TERM EXIT
    say "stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# Run a command again whenever it exits (a worker exits on purpose when it stops consuming).
supervise() {
    (
        child=""
        trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM INT
        while :; do
            "$@" &
            child=$!
            wait "$child" || true
            say "$(basename "$1") exited; restarting in 2 s"
            sleep 2
        done
    ) &
    pids+=($!)
}

"$VENV/bin/gunicorn" --workers 2 --threads 4 --bind "$DERMATRIAGE_WEB_HOST:$DERMATRIAGE_WEB_PORT" \
    --timeout 300 "web.wsgi:app" &
pids+=($!)
export DERMATRIAGE_WORKER_NAME="worker1@$(hostname)"
supervise "$VENV/bin/celery" -A worker.app worker --pool prefork --concurrency 1 \
    -Q "$DERMATRIAGE_QUEUE" -n "worker1@%h" --loglevel INFO
# One scheduler for the deployment, in its own process: a worker's death does not stop it, nor its the
# reconciler. /health says when a background duty is overdue.
supervise "$VENV/bin/celery" -A worker.app beat --schedule "$DERMATRIAGE_DATA_DIR/celerybeat-schedule" \
    --loglevel INFO
# Flower's /metrics and /healthcheck answer without its basic auth: it listens on this machine only.
supervise "$VENV/bin/celery" -A worker.app flower --port="$DERMATRIAGE_FLOWER_PORT" --address=127.0.0.1 \
    --basic-auth="$DERMATRIAGE_FLOWER_USER:$DERMATRIAGE_FLOWER_PASSWORD" --logging=warning

say "portal: http://$DERMATRIAGE_WEB_HOST:$DERMATRIAGE_WEB_PORT/"
say "flower: http://127.0.0.1:$DERMATRIAGE_FLOWER_PORT/ (user $DERMATRIAGE_FLOWER_USER, password $DERMATRIAGE_FLOWER_PASSWORD)"
say "Ctrl-C stops everything"
wait -n "${pids[@]}" || true
