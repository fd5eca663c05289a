#!/usr/bin/env bash
# Replica scaling through nginx: embeddings/s with nginx in front of one
# single-thread gritserve replica against nginx in front of two, each replica
# pinned to its own core (taskset -c 0, taskset -c 1), on the Qwen2.5-0.5B-shape
# checkpoint. nginx (Debian's nginx-light) runs in the foreground from a
# temporary prefix with a least_conn/keepalive upstream and the proxy settings
# of docker/nginx/nginx.conf; bench/scale_replicas.py drives a fixed number of
# keep-alive connections POSTing the same /embed batch, in rounds alternating
# 1 and 2 replicas, and prints JSON: per-round and median embeddings/s, p50/p99
# latency, the 2/1 ratio, and how many requests each replica served.
#   bench/scale_replicas.sh [MODEL_DIR] [WINDOW_S] [--out FILE]
# Environment: ROUNDS (3), CONNECTIONS (4), INPUTS per request (4), WARMUP_S (8),
#   DTYPE (bfloat16), GRITSERVE (build/gritserve).
# Run it under `flock /work/cpu.lock` on a shared machine. About 5.5 minutes
# with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
model=/tmp/gritserve-bench-qwen2.5-0.5b-bf16
window=40
out=
positional=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    *) positional=$((positional + 1))
       if [ $positional = 1 ]; then model=$1; else window=$1; fi
       shift ;;
  esac
done
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-4}
inputs=${INPUTS:-4}
warmup=${WARMUP_S:-8}
dtype=${DTYPE:-bfloat16}
gritserve=${GRITSERVE:-build/gritserve}
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 cores" >&2; exit 1; }
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >/dev/null
if [ ! -f "$model/config.json" ]; then
  "$gritserve" make-checkpoint --preset qwen2.5-0.5b --dtype bf16 --out "$model" >/dev/null
fi

tmp=$(mktemp -d)
chmod 755 "$tmp"   # nginx workers may run as another user
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
r1=$(free_port); r2=$(free_port); n1=$(free_port); n2=$(free_port)

# Each replica: one compute thread; every thread of it (HTTP ones too) on its core.
for i in 0 1; do
  port=$r1; [ $i = 1 ] && port=$r2
  taskset -c $i "$gritserve" --model "$model" --dtype "$dtype" --threads 1 --port "$port" \
    --log-level warn --grace-seconds 2 >"$tmp/replica$i.log" 2>&1 &
  pids+=($!)
done

cat >"$tmp/nginx.conf" <<EOF
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $tmp/body;
  proxy_temp_path $tmp/proxy;
  fastcgi_temp_path $tmp/fastcgi;
  uwsgi_temp_path $tmp/uwsgi;
  scgi_temp_path $tmp/scgi;
  # As docker/nginx/nginx.conf:
  client_max_body_size 64m;
  proxy_buffering off;
  proxy_request_buffering off;
  proxy_http_version 1.1;
  proxy_read_timeout 600s;
  proxy_send_timeout 600s;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;

  upstream one {
    least_conn;
    server 127.0.0.1:$r1 max_fails=3 fail_timeout=10s;
    keepalive 32;
  }
  upstream two {
    least_conn;
    server 127.0.0.1:$r1 max_fails=3 fail_timeout=10s;
    server 127.0.0.1:$r2 max_fails=3 fail_timeout=10s;
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$n1;
    location / {
      proxy_pass http://one;
      add_header X-Gritserve-Upstream \$upstream_addr always;
    }
  }
  server {
    listen 127.0.0.1:$n2;
    location / {
      proxy_pass http://two;
      add_header X-Gritserve-Upstream \$upstream_addr always;
    }
  }
}
EOF
nginx -p "$tmp" -e "$tmp/error.log" -c "$tmp/nginx.conf" -g "daemon off; pid $tmp/nginx.pid;" &
pids+=($!)

for port in $r1 $r2 $n1 $n2; do
  for _ in $(seq 1 600); do
    curl -sf "127.0.0.1:$port/health" >/dev/null && break
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null || { echo "a process exited early:" >&2; tail -n 5 "$tmp"/*.log >&2; exit 1; }
    done
    sleep 0.2
  done
  curl -sf "127.0.0.1:$port/health" >/dev/null || { echo "127.0.0.1:$port is not up" >&2; exit 1; }
done

meta=$(python3 - "$model" "$dtype" "$gritserve" "$r1" <<'PY'
import json, os, subprocess, sys, urllib.request
model, dtype, binary, port = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
cfg = json.load(open(os.path.join(model, "config.json")))
info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/info"))
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None
print(json.dumps({
    "benchmark": "bench/scale_replicas.sh",
    "what": "embeddings/s through nginx (least_conn, keepalive) to 1 vs 2 single-thread gritserve replicas, each pinned to its own core",
    "cpu": cpu, "cores": os.cpu_count(),
    "git_commit": run("git", "rev-parse", "HEAD"),
    "gritserve": binary, "gritserve_version": info.get("version"),
    "nginx": (run("nginx", "-v") or subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()),
    "model": model, "model_shape": {k: cfg.get(k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")},
    "parameters": info.get("parameters"), "dtype": dtype, "replica_threads": 1,
    "pinning": {"replica_1": "taskset -c 0", "replica_2": "taskset -c 1", "nginx_and_client": "unpinned"},
}))
PY
)

python3 bench/scale_replicas.py --nginx-one "$n1" --nginx-two "$n2" \
  --replica "127.0.0.1:$r1" --replica "127.0.0.1:$r2" \
  --rounds "$rounds" --connections "$connections" --inputs "$inputs" \
  --warmup "$warmup" --window "$window" --meta "$meta" ${out:+--out "$out"} &
pids+=($!)
# In the background, so that INT/TERM reach the trap at once (`wait` returns).
wait $!
