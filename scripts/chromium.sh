#!/usr/bin/env bash
# Make sure a headless Chromium and its WebDriver are there for the web page's tests
# (tests/integration/test_ui.py): install Debian's chromium and chromium-driver with apt when
# either is missing (their recommends bring the fonts the screenshots need), then check that both
# answer. Safe to run again. Needs root (or sudo).
set -euo pipefail

log() { printf 'chromium: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

browser=$(chromium --version 2>/dev/null)  # its wrapper script warns about memory sizes
driver=$(chromedriver --version)
log "${browser}; ${driver}"
