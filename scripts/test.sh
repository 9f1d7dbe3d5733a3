#!/usr/bin/env bash
# Command two: install what the tests need (Python packages and Debian's Chromium) and run the whole suite.
# With CI=true the suite runs on PostgreSQL + Redis (127.0.0.1) and fails if either is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if ! command -v chromium >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser tests..."
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ "${CI:-}" = "true" ]; then
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}
fi
export CXR_VAR_DIR=${CXR_VAR_DIR:-$(mktemp -d)}
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers and Django-free ml packages ([tool.importlinter] in pyproject.toml)
exec .venv/bin/python -m pytest "$@"
