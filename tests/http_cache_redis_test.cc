// The document store's Redis tier over HTTP, against the real binary and a
// real redis-server: documents and ids one server stores are used by another
// (nothing recomputed, the same generation as computing them), a damaged
// value in Redis is detected and recomputed, and a Redis that hangs, dies and
// comes back leaves every request served, /health 200, /info saying the tier
// is degraded, until it reconnects on its own.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "http_api_util.h"
#include "redis_process.h"

namespace gritserve::testing {
namespace {

const char* kDocA = "The lighthouse keeper counted ships every night and wrote their names down.";
const char* kDocB = "A recipe for bread: flour, water, salt, yeast, patience and a warm oven.";

std::vector<std::string> RedisArgs(const RedisProcess& redis) {
  return {"--cache-redis", redis.Url(), "--cache-redis-timeout-ms", "200"};
}

json Stats(httplib::Client& c) { return BodyJson(c.Get("/cache")); }
json RedisStats(httplib::Client& c) { return Stats(c)["tiers"]["redis"]; }

// Waits until the server's queued Redis writes reached `n` in total.
void AwaitRedisWrites(httplib::Client& c, int64_t n) {
  ASSERT_TRUE(WaitFor([&] { return RedisStats(c)["writes"].get<int64_t>() >= n; }))
      << RedisStats(c);
}

json GenerateOver(httplib::Client& c, const json& documents) {
  return Ok(c, "/generate",
            {{"prompt", "What did the text say?"},
             {"documents", documents},
             {"kv_source", "embed"},
             {"temperature", 0},
             {"max_tokens", 8}});
}

json Ids(const std::string& id) { return json::array({id}); }
json Text(const std::string& text) { return json::array({json{{"text", text}}}); }

std::string RedisTierState(httplib::Client& c) {
  return BodyJson(c.Get("/info"))["cache_tiers"]["redis"].get<std::string>();
}

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(HttpCacheRedisTest, ServersShareEntriesAndIdsThroughRedis) {
  RedisProcess redis;
  ServerProcess a(TinyCheckpointDir(), RedisArgs(redis));
  ServerProcess b(TinyCheckpointDir(), RedisArgs(redis));
  auto ca = a.Client();
  auto cb = b.Client();
  Ok(*ca, "/embed", {{"inputs", {kDocA}}, {"ids", {"doc-a"}}});
  AwaitRedisWrites(*ca, 2);  // the id and the entry
  EXPECT_EQ(redis.Keys("gritserve:kv:*").size(), 1u);
  EXPECT_EQ(redis.Keys("gritserve:id:*").size(), 1u);

  const json on_b = GenerateOver(*cb, Ids("doc-a"));
  const json sb = Stats(*cb);
  EXPECT_EQ(sb["computed"], 0) << "B reused A's entry: " << sb;
  EXPECT_EQ(sb["tiers"]["redis"]["hits"], 1) << sb;
  EXPECT_EQ(sb["tiers"]["redis"]["id_hits"], 1) << sb;
  EXPECT_GT(sb["tiers"]["redis"]["read_bytes"].get<int64_t>(), 0) << sb;
  EXPECT_EQ(sb["tiers"]["redis"]["state"], "ok");

  // The same generation as on the server that computed the document, and as
  // on one that computes it without Redis.
  EXPECT_EQ(on_b["text"], GenerateOver(*ca, Ids("doc-a"))["text"]);
  ServerProcess alone(TinyCheckpointDir());
  auto cc = alone.Client();
  Ok(*cc, "/embed", {{"inputs", {kDocA}}, {"ids", {"doc-a"}}});
  const json computed = GenerateOver(*cc, Ids("doc-a"));
  EXPECT_EQ(on_b["text"], computed["text"]);
  EXPECT_EQ(on_b["usage"]["cached_tokens"], computed["usage"]["cached_tokens"]);
  EXPECT_GT(on_b["usage"]["cached_tokens"].get<int64_t>(), 0);

  // Ids go both ways, and embeddings come with the entries.
  const json vec_b = Ok(*cb, "/embed", {{"inputs", {kDocB}}, {"ids", {"doc-b"}}});
  AwaitRedisWrites(*cb, 2);
  const json on_a = GenerateOver(*ca, Ids("doc-b"));
  EXPECT_EQ(Stats(*ca)["computed"], 0);
  EXPECT_EQ(on_a["text"], GenerateOver(*cb, Ids("doc-b"))["text"]);
  const json vec_a = Ok(*ca, "/embed", {{"inputs", {kDocB}}, {"cache", true}});
  EXPECT_EQ(vec_a, vec_b);

  const std::string metrics = MetricsText(*cb);
  // B fetched twice (doc-a for its generation, doc-b before embedding it),
  // one round trip each; doc-b was not there yet.
  EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_tier_hits_total{tier=\"redis\"}"), 1);
  EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_tier_misses_total{tier=\"redis\"}"), 1);
  EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_fetch_seconds_count{tier=\"redis\"}"), 2);
  EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_redis_up"), 1);

  // Deleting an id on one server deletes it in Redis: a third server cannot find it.
  EXPECT_EQ(ca->Delete("/cache/doc-a")->status, 200);
  ServerProcess c3(TinyCheckpointDir(), RedisArgs(redis));
  auto c3c = c3.Client();
  EXPECT_EQ(PostJson(*c3c, "/generate", {{"prompt", "x"}, {"documents", Ids("doc-a")}})->status,
            404);
}

TEST(HttpCacheRedisTest, DamagedValueInRedisIsDetectedAndRecomputed) {
  RedisProcess redis;
  json expected;
  {
    ServerProcess a(TinyCheckpointDir(), RedisArgs(redis));
    auto ca = a.Client();
    Ok(*ca, "/embed", {{"inputs", {kDocA}}, {"ids", {"doc-a"}}});
    AwaitRedisWrites(*ca, 2);
    expected = GenerateOver(*ca, Ids("doc-a"));
  }
  const std::vector<std::string> keys = redis.Keys("gritserve:kv:*");
  ASSERT_EQ(keys.size(), 1u);
  RedisReplyPtr chunk = redis.Command({"HGET", keys[0], "0"});
  ASSERT_TRUE(chunk && chunk->type == REDIS_REPLY_STRING);
  std::string bytes(chunk->str, chunk->len);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x01);
  ASSERT_TRUE(redis.Command({"HSET", keys[0], "0", bytes}));

  ServerProcess b(TinyCheckpointDir(), RedisArgs(redis));
  auto cb = b.Client();
  const json got = GenerateOver(*cb, Ids("doc-a"));
  EXPECT_EQ(got["text"], expected["text"]);
  const json s = Stats(*cb);
  EXPECT_EQ(s["computed"], 1) << "the damaged entry was not used: " << s;
  EXPECT_EQ(s["tiers"]["redis"]["corrupt"], 1) << s;
  EXPECT_NE(b.Log().find("checksum mismatch"), std::string::npos) << b.Log();
  // B stored the recomputed entry again: a fresh server reads it intact.
  AwaitRedisWrites(*cb, 1);
  ServerProcess c(TinyCheckpointDir(), RedisArgs(redis));
  auto cc = c.Client();
  EXPECT_EQ(GenerateOver(*cc, Ids("doc-a"))["text"], expected["text"]);
  EXPECT_EQ(Stats(*cc)["computed"], 0);
}

TEST(HttpCacheRedisTest, RequestsSucceedWhileRedisHangsOrDiesAndTheTierRecovers) {
  RedisProcess redis;
  ServerProcess a(TinyCheckpointDir(), RedisArgs(redis));
  auto ca = a.Client();
  Ok(*ca, "/embed", {{"inputs", {kDocA}}, {"ids", {"doc-a"}}});
  AwaitRedisWrites(*ca, 2);
  const json expected = GenerateOver(*ca, Ids("doc-a"));

  // Hung: connections open, no answers. Each request waits the timeout at most.
  redis.Stop();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(GenerateOver(*ca, Text(kDocB))["usage"]["cached_tokens"].get<int64_t>() > 0, true);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_TRUE(WaitFor([&] { return RedisTierState(*ca) == "degraded"; }));
  EXPECT_EQ(ca->Get("/health")->status, 200);
  redis.Continue();
  ASSERT_TRUE(WaitFor([&] { return RedisTierState(*ca) == "ok"; }, std::chrono::seconds(20)))
      << a.Log();

  // Dead: everything is still served, from memory or by computing.
  redis.Kill();
  EXPECT_EQ(GenerateOver(*ca, Ids("doc-a"))["text"], expected["text"]);
  Ok(*ca, "/embed", {{"inputs", {kDocB}}, {"ids", {"doc-b"}}});
  EXPECT_EQ(PostJson(*ca, "/generate", {{"prompt", "x"}, {"documents", Ids("doc-b")}})->status,
            200);
  EXPECT_TRUE(WaitFor([&] { return RedisTierState(*ca) == "degraded"; }));
  EXPECT_EQ(ca->Get("/health")->status, 200);
  EXPECT_GE(Metric(*ca, "gritserve_doc_cache_redis_outages_total"), 2);
  EXPECT_EQ(Metric(*ca, "gritserve_doc_cache_redis_up"), 0);

  // Back on the same port (empty): the tier reconnects by itself and is shared again.
  ASSERT_TRUE(redis.Restart());
  ASSERT_TRUE(WaitFor([&] { return RedisTierState(*ca) == "ok"; }, std::chrono::seconds(20)))
      << a.Log();
  const int64_t before = RedisStats(*ca)["writes"].get<int64_t>();
  Ok(*ca, "/embed", {{"inputs", {"A third note, about maps."}}, {"ids", {"doc-c"}}});
  AwaitRedisWrites(*ca, before + 2);
  ServerProcess b(TinyCheckpointDir(), RedisArgs(redis));
  auto cb = b.Client();
  GenerateOver(*cb, Ids("doc-c"));
  EXPECT_EQ(Stats(*cb)["computed"], 0);
  const std::string log = a.Log();
  EXPECT_EQ(Occurrences(log, "unreachable"),
            static_cast<size_t>(RedisStats(*ca)["outages"].get<int64_t>()))
      << "one line per outage:\n"
      << log;
  EXPECT_GE(Occurrences(log, "reachable again"), 2u) << log;
}

}  // namespace
}  // namespace gritserve::testing
