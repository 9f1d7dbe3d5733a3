#!/usr/bin/env bash
# Command two: install what the tests need (Python packages and Debian's Chromium) and run the whole suite.
# With CI=true the suite runs on PostgreSQL + Redis (127.0.0.1) and fails if either is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# Debian packages the tests drive for real: Chromium (browser tests), Orthanc + its DICOMweb plugin (PACS import).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian's ${missing[*]} for the tests..."
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts a system Orthanc on 4242/8042; the tests start their own on free ports and need none of it.
  $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || $SUDO service orthanc stop >/dev/null 2>&1 || true
fi
if [ "${CI:-}" = "true" ]; then
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/15}
fi
export CXR_VAR_DIR=${CXR_VAR_DIR:-$(mktemp -d)}
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the layers and Django-free ml packages ([tool.importlinter] in pyproject.toml)
exec .venv/bin/python -m pytest "$@"
