#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (puppeteer-core drives it and
# never downloads a browser itself). Does nothing when it is already there.
# Needs root or sudo; the tests that need a browser say so when it is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
echo "installing Debian's chromium for the browser tests"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
