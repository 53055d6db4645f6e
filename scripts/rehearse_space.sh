#!/usr/bin/env bash
# Rehearses a Hugging Face Space build of this repo on this machine: the Debian packages in
# packages.txt, then a clean virtual environment that gets `pip install -r requirements.txt`
# and nothing else, then `python app.py` from a copy of the repo's files, then one Talk request
# to a bundled example through gradio_client. The app and the request run without network (a
# network namespace with loopback only, where `unshare` allows; HF_HUB_OFFLINE=1 always).
#
# Usage: bash scripts/rehearse_space.sh [WORK_DIR]      (default /tmp/semollama-space)
# pip's cache is used as a Space's builder would not (--no-cache-dir there): wheels built here
# before, llama-cpp-python's among them, are reused, so a rehearsal takes minutes, not an hour.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mkdir -p "${1:-/tmp/semollama-space}" && cd "${1:-/tmp/semollama-space}" && pwd)"
PORT="${SEMOLLAMA_REHEARSAL_PORT:-7871}"
START_TIMEOUT_S="${SEMOLLAMA_REHEARSAL_START_TIMEOUT:-900}"
began=$(date +%s)
say() { echo "[rehearse $(( $(date +%s) - began ))s] $*"; }

# 1. packages.txt, as the Space's builder installs it.
missing=$(for p in $(grep -v '^#' "$ROOT/packages.txt"); do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  say "installing Debian packages: $missing"
  SUDO=""; if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# 2. A clean virtual environment with requirements.txt only.
rm -rf "$WORK/venv" "$WORK/app" "$WORK/home"
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
say "pip install -r requirements.txt into a clean venv ($WORK/venv)"
nice -n 5 "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt" 2>&1 \
  | grep -v -e "^WARNING: Location" -e "Running pip as the 'root' user" || true
"$PY" -m pip check >/dev/null 2>&1 || say "note: pip check reports: $("$PY" -m pip check 2>&1 | head -3 | tr '\n' ' ')"
installed=$(date +%s)
say "installed in $(( installed - began )) s; llama-cpp-python: $("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || echo missing)"

# 3. The repo's files (tracked and untracked-but-not-ignored, as a push would carry), fresh caches.
mkdir -p "$WORK/app" "$WORK/home"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$WORK/app"
EXAMPLE="$WORK/app/assets/examples/$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["audio"])' \
  "$WORK/app/assets/examples/examples.jsonl")"

# 4. Start app.py and send one Talk request, both without network.
cat > "$WORK/run.sh" <<EOF
set -euo pipefail
if command -v ip >/dev/null; then ip link set lo up 2>/dev/null || true; fi
cd "$WORK/app"
export HOME="$WORK/home" HF_HOME="$WORK/home/hf" SEMOLLAMA_CACHE="$WORK/home/cache" \
       SEMOLLAMA_DATA_DIR="$WORK/home/data" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       GRADIO_ANALYTICS_ENABLED=False GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT=$PORT
"$PY" app.py > "$WORK/app.log" 2>&1 &
app=\$!
trap 'kill \$app 2>/dev/null || true' EXIT
for _ in \$(seq 1 $START_TIMEOUT_S); do
  if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=2)" 2>/dev/null; then break; fi
  if ! kill -0 \$app 2>/dev/null; then echo "app.py exited:"; tail -5 "$WORK/app.log"; exit 1; fi
  sleep 1
done
echo "[rehearse] app.py is up"
"$PY" "$ROOT/scripts/talk_once.py" "http://127.0.0.1:$PORT/" "$EXAMPLE"
EOF
if [ "$(id -u)" = "0" ] && unshare -n true 2>/dev/null; then
  say "starting app.py in a network namespace without network (loopback only)"
  runner=(unshare -n bash "$WORK/run.sh")
else
  say "note: cannot make a network namespace here; offline by HF_HUB_OFFLINE only"
  runner=(bash "$WORK/run.sh")
fi
set +e
"${runner[@]}"
status=$?
set -e
ended=$(date +%s)
say "install $(( installed - began )) s, start + one Talk request $(( ended - installed )) s, total $(( ended - began )) s"
if [ "$status" != "0" ]; then
  say "FAILED (exit $status); the app's log: $WORK/app.log"
  tail -20 "$WORK/app.log" || true
  exit "$status"
fi
say "OK: the Space build answers a Talk request offline"
