#!/usr/bin/env bash
# Peak memory of one long embedding: starts a server, sends one /embed of
# TOKENS random token ids, and prints how much the server's peak resident set
# (VmHWM) rose above its resident set before the request, and its resident
# set after it, as JSON.
#   bench/embed_peak_memory.sh [MODEL_DIR] [TOKENS] [BINARY]
# MODEL_DIR defaults to the Qwen2.5-0.5B-shape checkpoint bench_engine makes
# (made here if missing); BINARY to build/gritserve (pass another build's to
# compare).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-/tmp/gritserve-bench-qwen2.5-0.5b}
tokens=${2:-16384}
binary=${3:-build/gritserve}
if [ ! -f "$model/config.json" ]; then
  build/gritserve make-checkpoint --preset qwen2.5-0.5b --out "$model" >/dev/null
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$binary" --model "$model" --port "$port" --max-input-tokens "$tokens" --log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "localhost:$port/health" >/dev/null && break
  sleep 0.2
done
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
body=$(mktemp)
python3 -c "import json, random; random.seed(1); print(json.dumps({'inputs': [[random.randrange(0, 150000) for _ in range($tokens)]]}))" > "$body"
curl -sf -o /dev/null -H 'Content-Type: application/json' \
  -d '{"inputs": "a short text to warm up"}' "localhost:$port/embed"
# Loading peaks higher than serving (the mapped checkpoint beside its copy):
# the peak is reset to the current resident set first (Linux clear_refs).
echo 5 > "/proc/$pid/clear_refs"
before=$(kib VmHWM)
start=$(date +%s.%N)
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary "@$body" "localhost:$port/embed")
end=$(date +%s.%N)
rm -f "$body"
printf '{"tokens": %s, "status": %s, "seconds": %.2f, "peak_before_bytes": %s, "peak_after_bytes": %s, "peak_growth_bytes": %s, "resident_after_bytes": %s}\n' \
  "$tokens" "$status" "$(echo "$end - $start" | bc)" "$((before * 1024))" "$(($(kib VmHWM) * 1024))" \
  "$(( ($(kib VmHWM) - before) * 1024 ))" "$(($(kib VmRSS) * 1024))"
