#!/usr/bin/env bash
# Makes sure Debian's dataset-fashion-mnist (the demo's real photos) is installed.
set -euo pipefail
if [ -n "${MLRKIT_FASHION_MNIST:-}" ] || dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ]; then
  echo "installing dataset-fashion-mnist (Debian) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "mlrkit: the demo and tests need Fashion-MNIST's photos." >&2
  echo "Run: sudo apt-get install -y dataset-fashion-mnist" >&2
  echo "(or point MLRKIT_FASHION_MNIST at a folder with the Fashion-MNIST idx files)" >&2
  exit 1
fi
