#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (no browser download).
# Install it when missing and we may (root with apt); otherwise those tests skip.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian chromium for the browser tests..."
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/tmp/cxrdx-chromium.log 2>&1 \
    || echo "could not install chromium (see /tmp/cxrdx-chromium.log); browser tests will skip"
else
  echo "no /usr/bin/chromium; browser tests will skip (install Debian's chromium to run them)"
fi
exit 0
