#!/usr/bin/env bash
# The dashboard in a real browser: Debian's headless Chromium driven by
# Selenium (tests/dashboard/check.py) against the debug binary with tokens
# and demo data. Installs chromium and chromium-driver from Debian when they
# are missing (never a browser download), Selenium in a virtualenv under
# target/. Screenshots of every page: target/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "chromium or chromedriver is missing: installing them with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
venv=target/dashboard-venv
scripts/venv.sh "$venv" selenium==4.27.1
[ -x target/debug/leadscore ] || cargo build --locked
"$venv/bin/python" tests/dashboard/check.py target/debug/leadscore target/screenshots
