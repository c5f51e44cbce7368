#!/bin/sh
# Install the Debian packages a purpose needs when they are missing, with apt-get, as root (or with
# passwordless sudo):
#   scripts/ensure-debian-packages.sh test   chromium (browser tests) + the lab's screens; fails if it cannot
#   scripts/ensure-debian-packages.sh screens  the lab's screens only (make check's screen tests); fails if it cannot
#   scripts/ensure-debian-packages.sh lab    the lab's screens (xvfb x11vnc xterm novnc); only warns: the
#                                            lab then shows the Guacamole stand-in's plain page
# CONTROLPLANE_TEST_CHROMIUM names another Chromium for the tests (chromium is then not installed).
set -eu
purpose="${1:-test}"
screens="xvfb x11vnc xterm novnc"
case "$purpose" in
  test) wanted="$screens"; [ -n "${CONTROLPLANE_TEST_CHROMIUM:-}" ] || wanted="chromium $wanted" ;;
  lab|screens) wanted="$screens" ;;
  *) echo "usage: $0 test|screens|lab" >&2; exit 2 ;;
esac
have() {  # is the package's part there?
  case "$1" in
    xvfb) command -v Xvfb >/dev/null 2>&1 ;;
    novnc) [ -f /usr/share/novnc/core/rfb.js ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}
missing=""
for package in $wanted; do have "$package" || missing="$missing $package"; done
[ -z "$missing" ] && exit 0
fail() {
  if [ "$purpose" != lab ]; then echo "ensure-debian-packages: $*" >&2; exit 1; fi
  echo "lab: $* The lab runs without real VM screens (the Guacamole stand-in shows its plain page)." >&2
  exit 0
}
if [ "$(id -u)" = 0 ]; then sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
else fail "missing Debian packages:$missing, and no root to install them (apt-get install$missing)."
fi
command -v apt-get >/dev/null 2>&1 || fail "missing:$missing, and no apt-get to install them."
echo "ensure-debian-packages: installing$missing"
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null; }; then
  fail "apt-get could not install$missing."
fi
for package in $missing; do have "$package" || fail "$package is still missing after apt-get."; done
