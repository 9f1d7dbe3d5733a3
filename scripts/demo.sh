#!/usr/bin/env bash
# Command one: install, migrate, create the demo study and accounts, start web + worker on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export DJANGO_SETTINGS_MODULE=config.settings
# DEBUG is off, so the settings need a secret key: the var folder's own, made on the first run and kept.
DJANGO_SECRET_KEY=${DJANGO_SECRET_KEY:-$(PYTHON=.venv/bin/python scripts/secret_key.sh)}
export DJANGO_SECRET_KEY
PORT=${PORT:-8000}
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py collectstatic --noinput -v 0
.venv/bin/python manage.py demo_setup
LOG_DIR=${CXR_VAR_DIR:-var}/log; mkdir -p "$LOG_DIR"
.venv/bin/celery -A config worker -B -Q default,gpu --pool=solo --concurrency=1 \
  --schedule "${CXR_VAR_DIR:-var}/celerybeat-schedule" --loglevel=INFO >"$LOG_DIR/worker.log" 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null || true' EXIT INT TERM
echo
echo "  CXR feedback loop is running:  http://127.0.0.1:$PORT/"
echo "  reader portal: http://127.0.0.1:$PORT/portal/     as  reader / reader-demo-pw"
echo "  dashboard:     http://127.0.0.1:$PORT/dashboard/  as  admin / admin-demo-pw  (studies, rounds, reports)"
echo "  API docs:      http://127.0.0.1:$PORT/api/v1/docs/  (tokens: manage.py api_token --user admin --scope admin)"
echo "  Django admin:  http://127.0.0.1:$PORT/admin/"
echo "  worker log:    $LOG_DIR/worker.log        (Ctrl-C stops both)"
echo
.venv/bin/gunicorn config.wsgi -b "127.0.0.1:$PORT" -w 4 --threads 2 -k gthread --access-logfile - \
  --log-level warning
