#!/usr/bin/env bash
# The test command: install what the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
export SEMOLLAMA_ARTIFACTS="${SEMOLLAMA_ARTIFACTS:-$PWD/ci-artifacts}"
set +e
python3 -m pytest -q -p no:cacheprovider --timeout 900 "$@"
status=$?
set -e
if [ "$status" = "5" ]; then echo "no tests ran"; exit 1; fi
exit $status
