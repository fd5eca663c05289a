#!/usr/bin/env bash
# End-to-end RAG over a 1,000-document collection (bench/rag_collection.py):
# starts one server on loopback, adds the documents in batches (each batch its
# own turn at the CPU lock, so the slow setup never holds it long), then times
# the three ways of answering and writes the JSON to $OUT.
#
#   bench/rag_collection.sh [SERVER_BINARY] [MODEL_DIR]
# Environment: OUT (bench/rag-collection-last-run.json), PORT (18480),
# THREADS (2), DOCS (1000), ROUNDS (5), LOCK (/work/cpu.lock; empty: none).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../build/gritserve}"
model="${2:-/tmp/gritserve-bench-qwen2.5-0.5b-bf16}"
out="${OUT:-$here/rag-collection-last-run.json}"
port="${PORT:-18480}"
threads="${THREADS:-2}"
docs="${DOCS:-1000}"
rounds="${ROUNDS:-5}"
lock="${LOCK-/work/cpu.lock}"
data="$(mktemp -d /tmp/rag-collection.XXXXXX)"
locked() { if [[ -n "$lock" ]]; then flock "$lock" "$@"; else "$@"; fi; }

"$bin" --model "$model" --port "$port" --threads "$threads" --dtype bfloat16 \
  --data-dir "$data" --cache-dtype bfloat16 --cache-bytes 6000000000 \
  --log-level warn >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 120); do
  curl -sf "localhost:$port/health" >/dev/null && break
  sleep 1
done

setup_start=$(date +%s)
step=250
for ((s = 0; s < docs; s += step)); do
  locked python3 "$here/rag_collection.py" --port "$port" setup --start "$s" \
    --count $((docs - s < step ? docs - s : step)) | tee -a "$data/setup.jsonl" >&2
done
setup_wall=$(($(date +%s) - setup_start))
setup_busy=$(python3 -c 'import json,sys; print(round(sum(json.loads(l)["seconds"] for l in open(sys.argv[1])),1))' "$data/setup.jsonl")

locked python3 "$here/rag_collection.py" --port "$port" measure --rounds "$rounds" >"$data/measure.json"

commit="${COMMIT:-$(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet HEAD -- . || echo -dirty)}"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
python3 - "$data/measure.json" "$out" <<EOF
import json, sys
m = json.load(open(sys.argv[1]))
m = {"bench": "rag_collection", "commit": "$commit", "server": "$bin", "model": "$model",
     "cpu": "$cpu", "cores": $(nproc), "threads": $threads, "dtype": "bfloat16",
     "cache_dtype": "bfloat16", "documents": $docs,
     "setup_seconds_adding": $setup_busy, "setup_seconds_wall": $setup_wall, **m}
json.dump(m, open(sys.argv[2], "w"), indent=2)
print(json.dumps(m["summary"], indent=2))
EOF
