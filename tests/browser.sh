#!/bin/sh
# Chromium for the browser tests (tests/test_browser.py), from Debian's `chromium`
# package at /usr/bin/chromium. Playwright drives it through `executable_path`;
# `playwright install` (a browser download) is never run.
#
# Without root or apt-get this only warns: the browser tests then skip, and
# fail under CI=true, naming what is missing.
set -u
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser.sh: $CHROMIUM is missing; install Debian's chromium package (as root: apt-get install -y chromium)" >&2
    exit 0
fi
echo "browser.sh: installing Debian's chromium for the browser tests"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
} || echo "browser.sh: apt-get install chromium failed; the browser tests will skip (fail under CI=true)" >&2
exit 0
