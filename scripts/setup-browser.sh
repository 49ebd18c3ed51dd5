#!/usr/bin/env bash
# Headless Chromium for the web-page test: Debian's chromium and chromium-driver (as root, via apt).
# Without root the test is skipped with a message saying so.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-browser: not root or no apt-get; the Chromium web-page test will be skipped" >&2
  exit 0
fi
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
  echo "setup-browser: apt-get could not install chromium; the Chromium web-page test will be skipped" >&2
fi
