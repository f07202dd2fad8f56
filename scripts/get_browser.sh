#!/usr/bin/env bash
# Debian's Chromium and Node.js/npm for the browser tests (tests/test_web_*.py),
# installed once. Best effort: where they cannot be installed, the browser
# tests fail with one line naming what is missing.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ ${#missing[@]} = 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian's ${missing[*]} for the browser tests..."
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1)) ||
    echo "Could not install ${missing[*]}; the browser tests will fail."
else
  echo "apt-get not usable here (not root?): install ${missing[*]} for the browser tests."
fi
exit 0
