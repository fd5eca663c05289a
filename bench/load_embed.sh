#!/usr/bin/env bash
# Load run: 8 concurrent clients POSTing one short text to /embed for DURATION
# seconds (wrk), against a server on the Qwen2.5-0.5B-shape checkpoint.
# Prints requests/s, p50/p99 latency and the server's peak RSS (which includes
# loading, when the mapped checkpoint and its copy coexist) and RSS after the run.
#   bench/load_embed.sh [MODEL_DIR] [DURATION_S] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-/tmp/gritserve-bench-qwen2.5-0.5b}
duration=${2:-60}
connections=${3:-8}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
if [ ! -f "$model/config.json" ]; then
  build/gritserve make-checkpoint --preset qwen2.5-0.5b --out "$model" >/dev/null
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
build/gritserve --model "$model" --port "$port" --log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "localhost:$port/health" >/dev/null && break
  sleep 0.2
done
lua=$(mktemp --suffix .lua)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs": "What is the capital of France?"}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "errors": %d, "requests_per_s": %.2f, "p50_ms": %.1f, "p99_ms": %.1f, "max_ms": %.1f}\n',
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout,
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
LUA
result=$(wrk -t2 -c"$connections" -d"${duration}s" --timeout 30s -s "$lua" "http://127.0.0.1:$port/embed" | tail -1)
rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
rss_now_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
batches=$(curl -s "localhost:$port/metrics" | awk '/^gritserve_embed_batch_size_mean/ {print $2}')
echo "$result" | python3 -c "import json,sys; d=json.load(sys.stdin); d['peak_rss_mib']=$rss_kb/1024; d['rss_after_run_mib']=$rss_now_kb/1024; d['mean_inputs_per_batch']=float('$batches'); d['connections']=$connections; d['duration_s']=$duration; print(json.dumps(d))"
