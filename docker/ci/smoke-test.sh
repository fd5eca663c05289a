#!/usr/bin/env bash
# Drives a running docker/compose.replicas.yaml stack through nginx, as a client
# would: health, embeddings, generation, a streamed chat completion, a document
# stored by one request and reused by the next, both replicas answering, and
# documents shared through Redis: embedded on one replica, generated over on
# either.
#   bash docker/ci/smoke-test.sh PROJECT PORT
# PROJECT: the compose project name (containers PROJECT_gritserve_N); PORT:
# nginx's port on loopback. Exits non-zero on the first failed check.
set -euo pipefail
source "$(dirname "$0")/env.sh"
project=$1
base="http://127.0.0.1:$2"
checks=0

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
pass() { checks=$((checks + 1)); echo "smoke: ok: $*"; }
# post PATH JSON [curl args...]: the body on stdout; headers in $hdr.
hdr=$(mktemp)
trap 'rm -f "$hdr"' EXIT
post() {
  local path=$1 body=$2
  shift 2
  curl -sS --max-time 120 -D "$hdr" -H 'Content-Type: application/json' "$@" \
    -d "$body" "$base$path"
}
upstream() { tr -d '\r' < "$hdr" | sed -n 's/^[Xx]-[Gg]ritserve-[Uu]pstream: //p'; }
# A replica's /cache, asked inside its container (the replicas publish no port).
cache_stats() {
  podman exec "$1" bash -c \
    'exec 3<>/dev/tcp/127.0.0.1/8080; printf "GET /cache HTTP/1.0\r\n\r\n" >&3; cat <&3' |
    sed -n '/^{/p'
}
# FIELD of the replicas' Redis tiers, summed (writes, write_drops, hits, ...).
redis_sum() {
  local total=0 v r
  for r in $replicas; do
    v=$(cache_stats "$r" | jq ".tiers.redis.$1" || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
status() { tr -d '\r' < "$hdr" | sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p'; }

# Both replicas load the demo checkpoint; wait until each container's own
# health check (the image's `gritserve health`) passes and nginx answers.
replicas=$(podman ps --format '{{.Names}}' | grep -E "^${project}_gritserve_[0-9]+$" | sort || true)
[ "$(printf '%s\n' "$replicas" | grep -c .)" -ge 2 ] || fail "fewer than two replicas: $replicas"
for r in $replicas; do
  for _ in $(seq 1 90); do
    podman healthcheck run "$r" >/dev/null 2>&1 && break
    sleep 2
  done
  podman healthcheck run "$r" >/dev/null 2>&1 || fail "$r never became healthy"
done
pass "health checks of $(echo $replicas | wc -w) replicas"
for _ in $(seq 1 30); do
  curl -sf --max-time 5 "$base/health" >/dev/null && break
  sleep 1
done
curl -sf --max-time 5 "$base/health" >/dev/null || fail "/health through nginx"
pass "/health through nginx"

out=$(post /embed '{"inputs": ["first text", "second text"]}')
[ "$(status)" = 200 ] || fail "/embed: $(status) $out"
[ "$(jq 'length' <<<"$out")" = 2 ] && [ "$(jq '.[0] | length' <<<"$out")" -gt 0 ] ||
  fail "/embed shape: $out"
norm=$(jq '[.[0][] | . * .] | add | sqrt' <<<"$out")
jq -e "($norm - 1 | fabs) < 1e-3" <<<null >/dev/null || fail "/embed not normalised: $norm"
pass "/embed: 2 vectors of $(jq '.[0] | length' <<<"$out") dims"

out=$(post /generate '{"prompt": "Hello", "max_tokens": 8, "temperature": 0, "ignore_eos": true}')
[ "$(status)" = 200 ] || fail "/generate: $(status) $out"
[ "$(jq '.usage.completion_tokens' <<<"$out")" = 8 ] || fail "/generate usage: $out"
pass "/generate: 8 tokens"

out=$(post /v1/chat/completions \
  '{"model": "any", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
    "stream": true, "temperature": 0}' -N)
[ "$(status)" = 200 ] || fail "chat stream: $(status) $out"
grep -q '^data: \[DONE\]' <<<"$out" || fail "chat stream has no [DONE]: $out"
chunks=$(grep '^data: {' <<<"$out" | sed 's/^data: //' |
  jq -s '[.[] | select(.object == "chat.completion.chunk")] | length')
[ "$chunks" -ge 2 ] || fail "chat stream chunks: $out"
pass "/v1/chat/completions streamed $chunks chunks and [DONE]"

# A document embedded with an id is reused by a generation over it, on the
# replica that holds it: the session header keeps both on one replica.
doc='The lighthouse keeper counted ships every night and wrote their names in a book.'
out=$(post /embed "{\"inputs\": [\"$doc\"], \"ids\": [\"smoke-doc\"]}" -H 'X-Session-Id: smoke-1')
[ "$(status)" = 200 ] || fail "/embed with ids: $(status) $out"
first=$(upstream)
out=$(post /generate '{"prompt": "Who counted ships?", "documents": ["smoke-doc"],
  "max_tokens": 4, "temperature": 0}' -H 'X-Session-Id: smoke-1')
[ "$(status)" = 200 ] || fail "/generate over the document: $(status) $out"
[ "$(upstream)" = "$first" ] || fail "session moved from $first to $(upstream)"
cached=$(jq '.usage.cached_tokens' <<<"$out")
[ "$cached" -gt 0 ] || fail "no cached tokens: $out"
pass "document stored and reused on $first: cached_tokens $cached"

# Without a session, least-connections spreads requests over the replicas.
seen=""
for _ in $(seq 1 8); do
  post /embed '{"inputs": "spread"}' >/dev/null
  [ "$(status)" = 200 ] || fail "/embed while spreading: $(status)"
  seen+="$(upstream)"$'\n'
done
distinct=$(printf '%s' "$seen" | sort -u | grep -c .)
[ "$distinct" -ge 2 ] || fail "one replica answered everything: $seen"
pass "$distinct replicas answered 8 unsessioned requests"

# Documents embedded through nginx are shared through Redis: generations over
# them, without a session, reuse their K/V whichever replica answers.
docs='"The ferry leaves the harbour at dawn and returns when the tide turns.",
  "Copper conducts heat well, which is why old kettles were made of it."'
writes=$(redis_sum writes) drops=$(redis_sum write_drops)
out=$(post /embed "{\"inputs\": [$docs], \"ids\": [\"shared-1\", \"shared-2\"]}")
[ "$(status)" = 200 ] || fail "/embed of shared documents: $(status) $out"
embedded_on=$(upstream)
# The replica's background writer stores each document's K/V and its id in
# Redis after answering: wait for those four writes (at most 30 s), and say
# so if the tier dropped any (it does while it takes Redis to be down).
for _ in $(seq 1 60); do
  [ "$(redis_sum writes)" -ge $((writes + 4)) ] && break
  sleep 0.5
done
[ "$(redis_sum write_drops)" = "$drops" ] ||
  fail "Redis writes dropped after /embed: $(for r in $replicas; do cache_stats "$r" | jq -c .tiers.redis; done)"
[ "$(redis_sum writes)" -ge $((writes + 4)) ] ||
  fail "the shared documents did not reach Redis in 30 s: $(redis_sum writes) writes, $writes before"
seen=""
for i in $(seq 1 6); do
  out=$(post /generate '{"prompt": "What leaves at dawn?", "documents": ["shared-1", "shared-2"],
    "kv_source": "embed", "max_tokens": 2, "temperature": 0}')
  [ "$(status)" = 200 ] || fail "/generate over shared documents ($i): $(status) $out"
  cached=$(jq '.usage.cached_tokens' <<<"$out")
  if [ "$i" = 1 ]; then want=$cached; fi
  [ "$cached" -gt 0 ] && [ "$cached" = "$want" ] ||
    fail "cached_tokens $cached on $(upstream), wanted $want: $out"
  seen+="$(upstream)"$'\n'
done
distinct=$(printf '%s' "$seen" | sort -u | grep -c .)
[ "$distinct" -ge 2 ] || fail "one replica answered every shared-document request: $seen"
shared=$(redis_sum hits)
[ "$shared" -ge 1 ] || fail "no replica read a document from Redis"
pass "documents embedded on $embedded_on reused by $distinct replicas: cached_tokens $want, $shared Redis hits"

echo "smoke: $checks passed, 0 failed"
