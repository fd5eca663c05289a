// The entry codec (the disk files' and Redis values' format), chunking, Redis
// URLs, and the Redis tier itself against a real redis-server: chunked values
// come back whole in one pipelined round trip, damage is refused, and an
// unreachable Redis is skipped within the timeout and reconnected to.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gritserve/cache/doc_kv_store.h"
#include "gritserve/cache/entry_codec.h"
#include "gritserve/cache/redis_tier.h"
#include "redis_process.h"

namespace gritserve::testing {
namespace {

DocKvEntry MakeEntry(int64_t tokens) {
  DocKvEntry e;
  e.key = {0x1234, 0x5678};
  e.source = KvSource::kEmbed;
  for (int64_t i = 0; i < tokens; ++i) e.ids.push_back(static_cast<int32_t>(100 + i));
  e.text_begin = 1;
  e.text_end = static_cast<size_t>(tokens);
  at::manual_seed(7);
  for (int l = 0; l < 3; ++l) {
    e.keys.push_back(at::randn({2, tokens, 8}).to(at::kHalf));  // [Hkv, T, D]
    e.values.push_back(at::randn({2, tokens, 8}).to(at::kHalf));
  }
  e.mean = {0.5f, -1.25f, 3.0f};
  e.last = {2.0f, 0.0f, -0.75f};
  return e;
}

TEST(EntryCodecTest, RoundTripsEveryField) {
  const DocKvEntry e = MakeEntry(5);
  const std::string bytes = EncodeEntry(e, "model-a");
  auto d = DecodeEntry(bytes, e.key, "model-a", "test");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->ids, e.ids);
  EXPECT_EQ(d->text_begin, e.text_begin);
  EXPECT_EQ(d->text_end, e.text_end);
  EXPECT_EQ(d->source, e.source);
  EXPECT_EQ(d->mean, e.mean);
  EXPECT_EQ(d->last, e.last);
  ASSERT_EQ(d->keys.size(), e.keys.size());
  for (size_t l = 0; l < e.keys.size(); ++l) {
    EXPECT_EQ(d->keys[l].scalar_type(), at::kHalf);
    EXPECT_TRUE(at::equal(d->keys[l], e.keys[l]));
    EXPECT_TRUE(at::equal(d->values[l], e.values[l]));
  }
  EXPECT_EQ(EncodeEntry(*d, "model-a"), bytes) << "encoding is deterministic";
}

TEST(EntryCodecTest, RefusesAnyFlippedByteForeignOrTruncatedCopies) {
  const DocKvEntry e = MakeEntry(4);
  const std::string bytes = EncodeEntry(e, "model-a");
  for (size_t at = 0; at < bytes.size(); at += 7) {
    std::string bad = bytes;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    EXPECT_THROW(DecodeEntry(bad, e.key, "model-a", "test"), std::exception) << "byte " << at;
  }
  EXPECT_THROW(DecodeEntry(bytes, e.key, "model-b", "test"), std::runtime_error);
  EXPECT_THROW(DecodeEntry(bytes, DocKey{1, 2}, "model-a", "test"), std::runtime_error);
  EXPECT_THROW(DecodeEntry(bytes.substr(0, bytes.size() - 1), e.key, "model-a", "test"),
               std::exception);
  EXPECT_THROW(DecodeEntry("", e.key, "model-a", "test"), std::exception);
}

TEST(EntryCodecTest, AliasesCarryTheirModel) {
  DocAlias a;
  a.key = {9, 10};
  a.ids = {5, 6, 7};
  a.text_begin = 1;
  a.text_end = 3;
  const std::string bytes = EncodeAlias("doc-1", a, "model-a");
  std::string name;
  const DocAlias d = DecodeAlias(bytes, "test", "model-a", &name);
  EXPECT_EQ(name, "doc-1");
  EXPECT_EQ(d.ids, a.ids);
  EXPECT_TRUE(d.key == a.key);
  EXPECT_THROW(DecodeAlias(bytes, "test", "model-b", &name), std::exception);
  EXPECT_NO_THROW(DecodeAlias(bytes, "test", "", &name));  // the disk tier's files
}

TEST(RedisChunksTest, SplitsIntoBoundedPiecesThatJoinBack) {
  std::string bytes(10 * 1000 + 3, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 31);
  const auto chunks = SplitChunks(bytes, 1000);
  ASSERT_EQ(chunks.size(), 11u);
  std::string joined;
  for (auto c : chunks) {
    EXPECT_LE(c.size(), 1000u);
    joined.append(c.data(), c.size());
  }
  EXPECT_EQ(joined, bytes);
  EXPECT_EQ(SplitChunks(std::string(2000, 'x'), 1000).size(), 2u);
  EXPECT_EQ(SplitChunks("", 1000).size(), 1u);
}

TEST(RedisUrlTest, ParsesHostPortDatabaseAndCredentials) {
  RedisUrl u = ParseRedisUrl("redis://cache:6380/2");
  EXPECT_EQ(u.host, "cache");
  EXPECT_EQ(u.port, 6380);
  EXPECT_EQ(u.db, 2);
  EXPECT_TRUE(u.password.empty());
  u = ParseRedisUrl("redis://:s%40cret@10.0.0.1");
  EXPECT_EQ(u.host, "10.0.0.1");
  EXPECT_EQ(u.port, 6379);
  EXPECT_EQ(u.password, "s@cret");
  EXPECT_EQ(u.Display().find("cret"), std::string::npos) << "no password in logs";
  u = ParseRedisUrl("redis://app:pw@[::1]:7000/");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 7000);
  EXPECT_EQ(u.user, "app");
  for (const char* bad : {"http://x:1", "redis://", "redis://h:0", "redis://h:99999",
                          "redis://h:1/x", "redis://h:abc"}) {
    EXPECT_THROW(ParseRedisUrl(bad), std::invalid_argument) << bad;
  }
}

RedisTier::Options TierOptions(const RedisProcess& redis) {
  RedisTier::Options o;
  o.url = redis.Url();
  o.prefix = "t:";
  o.timeout_ms = 200;
  o.chunk_bytes = 1000;
  return o;
}

TEST(RedisTierTest, StoresChunkedValuesAndReadsSeveralInOneRoundTrip) {
  RedisProcess redis;
  RedisTier tier(TierOptions(redis));
  ASSERT_TRUE(tier.up());
  std::string big(3500, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i % 251);
  tier.PutEntry("t:kv:a", static_cast<int64_t>(big.size()), [big] { return big; });
  tier.PutEntry("t:kv:b", 5, [] { return std::string("small"); });
  tier.PutString("t:id:x", "{\"alias\":\"x\"}");
  tier.Flush();
  // Stored as one hash of bounded chunks.
  RedisReplyPtr len = redis.Command({"HLEN", "t:kv:a"});
  ASSERT_TRUE(len);
  EXPECT_EQ(len->integer, 5) << "n and 4 chunks of at most 1000 bytes";
  const auto got = tier.GetEntries({"t:kv:a", "t:kv:missing", "t:kv:b"});
  ASSERT_EQ(got.size(), 3u);
  ASSERT_TRUE(got[0]);
  EXPECT_EQ(*got[0], big);
  EXPECT_FALSE(got[1]);
  ASSERT_TRUE(got[2]);
  EXPECT_EQ(*got[2], "small");
  EXPECT_EQ(tier.GetString("t:id:x").value_or(""), "{\"alias\":\"x\"}");
  // A chunk gone (written by something else) is not a value.
  redis.Command({"HDEL", "t:kv:a", "2"});
  EXPECT_FALSE(tier.GetEntries({"t:kv:a"})[0]);
  const RedisTierStats s = tier.stats();
  EXPECT_EQ(s.writes, 3);
  EXPECT_EQ(s.hits, 2);
  EXPECT_EQ(s.misses, 2);
  EXPECT_EQ(s.latency.count, 2) << "one round trip per GetEntries";
  EXPECT_EQ(tier.Delete({"t:kv:b", "t:kv:none"}), 1);
}

bool AwaitUp(const RedisTier& tier) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!tier.up() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return tier.up();
}

TEST(RedisTierTest, SkipsAHungOrDeadRedisWithinTheTimeoutAndReconnects) {
  RedisProcess redis;
  RedisTier tier(TierOptions(redis));
  tier.PutString("t:id:y", "v");
  tier.Flush();
  redis.Stop();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(tier.GetString("t:id:y"));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 1.5) << "two tries of 200 ms at most";
  EXPECT_FALSE(tier.up());
  t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(tier.GetEntries({"t:kv:a"})[0]);  // skipped while down: no wait
  // Not even one timeout: skipped outright.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 0.2);
  redis.Continue();
  ASSERT_TRUE(AwaitUp(tier)) << "reconnected in the background";
  EXPECT_EQ(tier.GetString("t:id:y").value_or(""), "v");
  ASSERT_TRUE(redis.Restart());  // empty again, same port
  EXPECT_FALSE(tier.GetString("t:id:y")) << "gone with the restart, not an error";
  ASSERT_TRUE(AwaitUp(tier));  // the writer's heartbeat may have caught the restart
  tier.PutString("t:id:z", "w");
  tier.Flush();
  EXPECT_EQ(tier.GetString("t:id:z").value_or(""), "w");
  EXPECT_GE(tier.stats().outages, 1);
}

TEST(RedisTierTest, StartsWithoutRedisAndCountsDroppedWrites) {
  const int port = FreeLoopbackPort();
  RedisTier::Options o;
  o.url = "redis://127.0.0.1:" + std::to_string(port);
  o.timeout_ms = 200;
  RedisTier tier(o);
  EXPECT_FALSE(tier.up());
  tier.PutString("k", "v");
  EXPECT_FALSE(tier.GetString("k"));
  const RedisTierStats s = tier.stats();
  EXPECT_EQ(s.write_drops, 1);
  EXPECT_EQ(s.outages, 1);
}

}  // namespace
}  // namespace gritserve::testing
