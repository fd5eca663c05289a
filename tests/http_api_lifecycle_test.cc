// Server-wide behaviour that needs its own process: API keys, the JSON config
// file against flags, and shutdown on SIGTERM (draining) and SIGINT.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "http_api_util.h"
#include "server_harness.h"
#include "test_util.h"

namespace gritserve::testing {
namespace {

// A valid request for every protected route, so that the right key gives 200.
std::vector<std::pair<std::string, json>> PostRoutes() {
  const json messages = {{{"role", "user"}, {"content", "hi"}}};
  return {
      {"/embed", {{"inputs", "a"}}},
      {"/v1/embeddings", {{"input", "a"}}},
      {"/rerank", {{"query", "a"}, {"texts", {"b"}}}},
      {"/v1/rerank", {{"query", "a"}, {"documents", {"b"}}}},
      {"/generate", {{"prompt", "a"}, {"max_tokens", 2}}},
      {"/v1/completions", {{"prompt", "a"}, {"max_tokens", 2}}},
      {"/v1/chat/completions", {{"messages", messages}, {"max_tokens", 2}}},
      {"/tokenize", {{"inputs", "a"}}},
      {"/detokenize", {{"ids", {1, 2}}}},
  };
}
const std::vector<std::string> kGetRoutes = {"/info", "/v1/models", "/metrics", "/openapi.json",
                                             "/cache"};

TEST(HttpAuthTest, EveryRouteButHealthNeedsTheKey) {
  ServerProcess server(TinyCheckpointDir(), {"--api-key", "s3cret"});
  auto none = server.Client();
  auto wrong = server.Client("not-it");
  auto right = server.Client("s3cret");
  for (const auto& [path, body] : PostRoutes()) {
    ExpectError(PostJson(*none, path, body), 401, "no key: POST " + path);
    ExpectError(PostJson(*wrong, path, body), 401, "wrong key: POST " + path);
    auto ok = PostJson(*right, path, body);
    ASSERT_TRUE(ok) << path;
    EXPECT_EQ(ok->status, 200) << path << ": " << ok->body;
  }
  for (const auto& path : kGetRoutes) {
    ExpectError(none->Get(path.c_str()), 401, "no key: GET " + path);
    ExpectError(wrong->Get(path.c_str()), 401, "wrong key: GET " + path);
    auto ok = right->Get(path.c_str());
    ASSERT_TRUE(ok) << path;
    EXPECT_EQ(ok->status, 200) << path << ": " << ok->body;
  }
  ExpectError(none->Delete("/cache/some-id"), 401, "no key: DELETE /cache/{id}");
  ExpectError(right->Delete("/cache/some-id"), 404, "right key: DELETE an unknown id");
  // A key without "Bearer " is not the key.
  ExpectError(none->Get("/info", {{"Authorization", "s3cret"}}), 401, "bare key");
  auto health = none->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200) << "/health must not need the key";
}

TEST(HttpConfigTest, ConfigFileAppliesAndFlagsWin) {
  const std::string path = MakeTempDir("http-config") + "/server.json";
  std::ofstream(path) << R"({"max-inputs": 2, "api_key": "from-file", "max_tokens": 50})";
  // --max-tokens on the command line beats the file's max_tokens.
  ServerProcess server(TinyCheckpointDir(), {"--config", path, "--max-tokens", "60"});
  auto c = server.Client("from-file");
  json info = BodyJson(c->Get("/info"));
  EXPECT_EQ(info["limits"]["max_inputs"], 2) << info.dump();
  EXPECT_EQ(info["limits"]["max_tokens"], 60) << "the flag wins over the file";
  ExpectError(server.Client()->Get("/info"), 401, "the file's api_key applies");
  ExpectError(PostJson(*c, "/embed", {{"inputs", {"a", "b", "c"}}}), 413, "3 > max-inputs 2");
  ExpectError(PostJson(*c, "/generate", {{"prompt", "a"}, {"max_tokens", 61}}), 422,
              "max_tokens over the flag's limit");
  auto ok = PostJson(*c, "/generate", {{"prompt", "a"}, {"max_tokens", 55}, {"ignore_eos", true}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << "55 is over the file's 50 but within the flag's 60: " << ok->body;
}

TEST(HttpShutdownTest, SigtermDrainsInFlightRequestsThenExitsZero) {
  constexpr int kTokens = 1500;  // ~2-3 s on the slow checkpoint, 30 s and more under ASan
  // A grace period no generation here outlasts: this test is about draining,
  // and the default 30 s would cut a slow (sanitized) build's request short.
  ServerProcess server(SlowCheckpointDir(), {"--grace-seconds", "600"});
  auto watcher = server.Client();
  auto running = std::async(std::launch::async, [&] {
    auto c = server.Client();
    return PostJson(
        *c, "/generate",
        {{"prompt", "hello"}, {"max_tokens", kTokens}, {"ignore_eos", true}, {"temperature", 0}});
  });
  ASSERT_TRUE(WaitFor([&] { return Metric(*watcher, "gritserve_active_generations") == 1; }));
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);

  // Draining: /health says 503 (or, once the listener closed, nothing answers).
  httplib::Result health{nullptr, httplib::Error::Unknown};
  ASSERT_TRUE(WaitFor([&] {
    health = watcher->Get("/health");
    return !health || health->status != 200;
  }));
  if (health) ExpectError(health, 503, "/health while draining");
  auto late = PostJson(*watcher, "/embed", {{"inputs", "too late"}});
  if (late) ExpectError(late, 503, "a new request while draining");

  auto res = running.get();
  ASSERT_TRUE(res) << "the in-flight request was dropped: " << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200) << res->body;
  json g = BodyJson(res);
  EXPECT_EQ(g["usage"]["completion_tokens"], kTokens) << "the in-flight request was cut short";
  EXPECT_EQ(g["finish_reason"], "length");
  EXPECT_FALSE(g["text"].get<std::string>().empty());
  // Signal 0 sends nothing: this only waits for the exit.
  EXPECT_EQ(server.Signal(0), 0) << server.Log();
}

TEST(HttpStartupTest, PortZeroBindsAFreePortThatBothLogLinesName) {
  ServerProcess server(TinyCheckpointDir());  // started with --port 0
  ASSERT_GT(server.port(), 0);
  const std::string where = "http://127.0.0.1:" + std::to_string(server.port());
  // Healthy means loaded; the "ready" line follows the load within moments.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server.Log().find("ready: model") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string log = server.Log();
  EXPECT_NE(log.find("listening on " + where + " "), std::string::npos) << log;
  const size_t ready = log.find("ready: model");
  ASSERT_NE(ready, std::string::npos) << log;
  const std::string line = log.substr(ready, log.find('\n', ready) - ready);
  EXPECT_EQ(line.substr(line.size() - where.size()), where) << line;
}

TEST(HttpShutdownTest, SigintWhenIdleExitsZero) {
  ServerProcess server(TinyCheckpointDir());
  auto ok = PostJson(*server.Client(), "/embed", {{"inputs", "one request first"}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(server.Signal(SIGINT), 0) << server.Log();
}

}  // namespace
}  // namespace gritserve::testing
