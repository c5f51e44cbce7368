#!/bin/sh
# Make sure the browser tests (tests/browser) have a headless Chromium: Debian's chromium package
# (/usr/bin/chromium), installed with apt-get when it is missing and this runs as root (or with
# passwordless sudo). CONTROLPLANE_TEST_CHROMIUM names another Chromium binary instead. Playwright
# drives it; Playwright's own browser downloads are never used.
set -eu
if [ -n "${CONTROLPLANE_TEST_CHROMIUM:-}" ]; then
  if [ -x "$CONTROLPLANE_TEST_CHROMIUM" ]; then exit 0; fi
  echo "ensure-chromium: CONTROLPLANE_TEST_CHROMIUM=$CONTROLPLANE_TEST_CHROMIUM is not an executable" >&2
  exit 1
fi
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "ensure-chromium: no chromium, and no root to install it. Install Debian's chromium" >&2
  echo "  (apt-get install chromium) or set CONTROLPLANE_TEST_CHROMIUM to a Chromium binary." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: no chromium and no apt-get: install Chromium, or set CONTROLPLANE_TEST_CHROMIUM." >&2
  exit 1
fi
echo "ensure-chromium: installing Debian's chromium for the browser tests"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1
