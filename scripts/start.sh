#!/usr/bin/env bash
# Install and start the app on the embedded default (http://127.0.0.1:7860 unless --port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 app.py "$@"
