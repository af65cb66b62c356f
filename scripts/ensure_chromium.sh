#!/usr/bin/env bash
# Makes sure a Chromium is there for the HTML report's browser test (Debian's chromium,
# driven headless by Playwright). Without one that test is skipped, so this never fails
# the build: as root it installs the package, otherwise it prints the command to run.
set -euo pipefail
chromium="${MLRKIT_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
if [ -n "${MLRKIT_CHROMIUM:-}" ]; then
  echo "mlrkit: MLRKIT_CHROMIUM=$chromium is not an executable; the report's browser" \
       "test will be skipped." >&2
  exit 0
fi
if [ "$(id -u)" = "0" ]; then
  echo "installing chromium (Debian) for the report's browser test ..."
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
          chromium >/dev/null; }; then
    echo "mlrkit: installing chromium failed; the report's browser test will be skipped." >&2
  fi
else
  echo "mlrkit: the HTML report's browser test needs Chromium; it is skipped without it." >&2
  echo "Run: sudo apt-get install -y chromium" >&2
  echo "(or point MLRKIT_CHROMIUM at another Chromium executable)" >&2
fi
