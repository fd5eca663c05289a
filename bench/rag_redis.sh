#!/usr/bin/env bash
# bench_rag with the Redis tier: starts a redis-server (Debian's package) on a
# free loopback port, runs build/bench_rag against it (time to first token with
# the documents' K/V from memory, from Redis and computed, in one run), and
# stops it. Extra arguments go to bench_rag.
#   bash bench/rag_redis.sh [--threads N] [--model DIR] ...
set -euo pipefail
build=${BUILD_DIR:-build}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --maxmemory 2gb --maxmemory-policy allkeys-lru >/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
"$build/bench_rag" --cache-redis "redis://127.0.0.1:${port}/0" "$@"
