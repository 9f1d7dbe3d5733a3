#!/usr/bin/env bash
# Prints the secret key of a var folder (the argument, else $CXR_VAR_DIR, else var/): made at random on first use,
# kept in <var>/secret_key (mode 600) and reused, so sessions and pseudonyms survive restarts. With DEBUG off the
# settings refuse to start without a key; scripts/demo.sh uses this one, and so can commands run on its var folder:
#   export DJANGO_SECRET_KEY=$(scripts/secret_key.sh)
set -euo pipefail
var=${1:-${CXR_VAR_DIR:-$(dirname "$0")/../var}}
file=$var/secret_key
if [ ! -s "$file" ]; then
  mkdir -p "$var"
  (umask 077 && "${PYTHON:-python3}" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$file.new")
  mv "$file.new" "$file"
fi
cat "$file"
