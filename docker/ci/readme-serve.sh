#!/usr/bin/env bash
# Runs the README's first command (set up, build, serve with no model) in a
# tree where it has just been built (the Dockerfile's test stage), checks that
# the demo model is served and logged as random weights, and stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
log=$(mktemp)
port=8080
bash scripts/setup.sh >/dev/null
bash scripts/run.sh --port "$port" >"$log" 2>&1 &  # run.sh execs the server: $! is it
pid=$!
stop() { kill "$pid" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 120); do
  curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "readme-serve: server exited" >&2; exit 1; }
  sleep 1
done
curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null || { cat "$log"; exit 1; }
grep -q "RANDOM" "$log" || { cat "$log"; echo "readme-serve: no random-weights warning" >&2; exit 1; }
curl -sf --max-time 60 -H 'Content-Type: application/json' -d '{"inputs": "hello"}' \
  "http://127.0.0.1:$port/embed" | grep -q '^\[\[' || { echo "readme-serve: /embed" >&2; exit 1; }
curl -sf --max-time 60 -H 'Content-Type: application/json' \
  -d '{"prompt": "hello", "max_tokens": 4}' "http://127.0.0.1:$port/generate" | grep -q '"text"' ||
  { echo "readme-serve: /generate" >&2; exit 1; }
echo "readme-serve: the README's serve command served the demo model (random weights, logged)"
