// Server-sent event streams: their content against the non-streamed answer
// (tiny checkpoint), and, on a slower checkpoint, that events arrive while the
// generation runs, that a client going away frees its slot, and 429.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "http_api_util.h"
#include "server_harness.h"

namespace gritserve::testing {
namespace {

// Every event but [DONE] must be JSON; the stream ends with exactly one [DONE].
void ExpectWellFormed(const StreamResult& s) {
  EXPECT_EQ(s.status, 200) << (s.events.empty() ? "" : s.events.back());
  EXPECT_EQ(s.content_type.rfind("text/event-stream", 0), 0u) << s.content_type;
  ASSERT_FALSE(s.events.empty());
  EXPECT_EQ(s.events.back(), "[DONE]");
  for (size_t i = 0; i + 1 < s.events.size(); ++i) EXPECT_NE(s.events[i], "[DONE]");
}

class HttpStreamTest : public SharedServerTest<HttpStreamTest> {
 protected:
};

TEST_F(HttpStreamTest, GenerateStreamEqualsNonStreamed) {
  json body = {
      {"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}, {"ignore_eos", true}};
  json whole = Ok(*client_, "/generate", body);
  body["stream"] = true;
  StreamResult s = StreamPost(*client_, "/generate", body);
  ExpectWellFormed(s);
  auto events = JsonEvents(s);
  ASSERT_GE(events.size(), 2u);
  std::string text;
  for (const auto& e : events) text += e["text"].get<std::string>();
  EXPECT_EQ(text, whole["text"]);
  // The last event carries the summary of the non-streamed answer.
  const json& last = events.back();
  EXPECT_EQ(last["finish_reason"], "length");
  EXPECT_EQ(last["full_text"], whole["text"]);
  EXPECT_EQ(last["usage"]["completion_tokens"], 40);
  EXPECT_EQ(last["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"]);
  EXPECT_TRUE(last["timings"].is_object());
}

TEST_F(HttpStreamTest, CompletionsStreamEqualsNonStreamed) {
  json body = {{"prompt", "The quick brown fox"}, {"max_tokens", 25}, {"temperature", 0}};
  json whole = Ok(*client_, "/v1/completions", body);
  body["stream"] = true;
  StreamResult s = StreamPost(*client_, "/v1/completions", body);
  ExpectWellFormed(s);
  auto events = JsonEvents(s);
  ASSERT_GE(events.size(), 2u);
  std::string text;
  const std::string id = events[0]["id"].get<std::string>();
  for (const auto& e : events) {
    EXPECT_EQ(e["object"], "text_completion");
    EXPECT_EQ(e["id"], id) << "one id for the whole stream";
    EXPECT_FALSE(e.contains("usage")) << "usage only with stream_options.include_usage";
    ASSERT_EQ(e["choices"].size(), 1u);
    text += e["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
  EXPECT_EQ(events.back()["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_TRUE(events[i]["choices"][0]["finish_reason"].is_null());
  }

  body["stream_options"] = {{"include_usage", true}};
  auto with_usage = JsonEvents(StreamPost(*client_, "/v1/completions", body));
  ASSERT_GE(with_usage.size(), 2u);
  const json& u = with_usage.back();
  EXPECT_TRUE(u["choices"].is_array() && u["choices"].empty()) << u.dump();
  EXPECT_EQ(u["usage"], whole["usage"]);
}

TEST_F(HttpStreamTest, ChatStreamEqualsNonStreamed) {
  json body = {{"messages", {{{"role", "user"}, {"content", "Tell me something."}}}},
               {"max_tokens", 20},
               {"temperature", 0}};
  json whole = Ok(*client_, "/v1/chat/completions", body);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  StreamResult s = StreamPost(*client_, "/v1/chat/completions", body);
  ExpectWellFormed(s);
  auto events = JsonEvents(s);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant") << "the first delta";
  std::string text;
  json finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json& e = events[i];
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    ASSERT_EQ(e["choices"].size(), 1u);
    const json& delta = e["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, whole["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, whole["choices"][0]["finish_reason"]);
  const json& u = events.back();
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"], whole["usage"]);
}

// A checkpoint slow enough that a long generation is still running while the
// test looks at it, and one request slot, so that 429 is easy to reach.
class HttpLongGenerationTest : public SharedServerTest<HttpLongGenerationTest> {
 protected:
  static constexpr int kMaxTokens = 3000;

 public:  // called by SharedServerTest
  static ServerProcess* StartServer() {
    return new ServerProcess(SlowCheckpointDir(), {"--max-concurrent-requests", "1", "--max-tokens",
                                                   std::to_string(kMaxTokens)});
  }

 protected:
  void SetUp() override {
    SharedServerTest::SetUp();
    if (HasFatalFailure()) return;
    watcher_ = server_->Client();
    // A slot left busy by an earlier test would turn this one's requests into 429s.
    ASSERT_TRUE(WaitFor([&] { return Metric(*watcher_, "gritserve_active_generations") == 0; }));
  }
  double Active() { return Metric(*watcher_, "gritserve_active_generations"); }
  double Generated() { return Metric(*watcher_, "gritserve_generated_tokens_total"); }

  static json LongBody() {
    return {{"prompt", "hello"},
            {"max_tokens", kMaxTokens},
            {"ignore_eos", true},
            {"temperature", 0},
            {"stream", true}};
  }

  std::unique_ptr<httplib::Client> watcher_;  // a second connection, for /metrics
};

TEST_F(HttpLongGenerationTest, EventsArriveWhileGenerating) {
  double active_at_first = -1;
  std::vector<std::chrono::steady_clock::time_point> arrivals;
  StreamResult s = StreamPost(*client_, "/generate", LongBody(), [&](const std::string&) {
    if (arrivals.empty()) active_at_first = Active();
    arrivals.push_back(std::chrono::steady_clock::now());
    return arrivals.size() < 4;  // then hang up
  });
  EXPECT_EQ(s.status, 200);
  ASSERT_EQ(arrivals.size(), 4u);
  // Streaming means the first piece comes before the generation is over.
  EXPECT_EQ(active_at_first, 1) << "the first event arrived after the generation ended";
  EXPECT_GT(arrivals.back(), arrivals.front()) << "the pieces came separately";
}

TEST_F(HttpLongGenerationTest, DisconnectCancelsAndFreesTheSlot) {
  const double generated_before = Generated();
  int seen = 0;
  StreamResult s =
      StreamPost(*client_, "/generate", LongBody(), [&](const std::string&) { return ++seen < 3; });
  EXPECT_EQ(s.status, 200);
  EXPECT_EQ(seen, 3);
  EXPECT_EQ(s.error, httplib::Error::Canceled);
  ASSERT_TRUE(WaitFor([&] { return Active() == 0; }, std::chrono::seconds(5)))
      << "the generation kept its slot after the client left";
  const double generated = Generated() - generated_before;
  EXPECT_GT(generated, 0);
  EXPECT_LT(generated, kMaxTokens / 2) << "the generation ran on after the client left";
  // The slot (the only one) takes a new request.
  json g = Ok(*client_, "/generate", {{"prompt", "again"}, {"max_tokens", 3}});
  EXPECT_TRUE(g["text"].is_string());
}

TEST_F(HttpLongGenerationTest, SecondRequestGets429WhileTheSlotIsBusy) {
  bool checked = false;
  StreamResult s = StreamPost(*client_, "/generate", LongBody(), [&](const std::string&) {
    // One request slot, held by this stream: everything else is refused.
    ExpectError(PostJson(*watcher_, "/generate", {{"prompt", "x"}, {"max_tokens", 2}}), 429,
                "/generate while busy");
    ExpectError(PostJson(*watcher_, "/v1/chat/completions",
                         {{"messages", {{{"role", "user"}, {"content", "hi"}}}}}),
                429, "/v1/chat/completions while busy");
    ExpectError(PostJson(*watcher_, "/embed", {{"inputs", "x"}}), 429, "/embed while busy");
    checked = true;
    return false;
  });
  EXPECT_TRUE(checked);
  ASSERT_TRUE(WaitFor([&] { return Active() == 0; }, std::chrono::seconds(5)));
  auto after = PostJson(*client_, "/embed", {{"inputs", "x"}});
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200);
  EXPECT_GE(Metric(*watcher_, "gritserve_requests_total{route=\"/generate\",status=\"429\"}"), 1);
}

// --request-timeout: a generation running past it is cancelled and answered
// with 503 (plain) or an error event (streamed), and its slot is freed.
TEST(HttpRequestTimeoutTest, LongGenerationIsCancelledAtTheDeadline) {
  ServerProcess server(SlowCheckpointDir(), {"--request-timeout", "1", "--max-tokens", "3000"});
  auto client = server.Client();
  const json body = {{"prompt", "hello"}, {"max_tokens", 3000}, {"ignore_eos", true},
                     {"temperature", 0}};
  const auto t0 = std::chrono::steady_clock::now();
  ExpectError(PostJson(*client, "/generate", body), 503, "generation past --request-timeout");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  ASSERT_TRUE(WaitFor([&] { return Metric(*client, "gritserve_active_generations") == 0; },
                      std::chrono::seconds(5)))
      << "the timed-out generation kept running";

  json streamed = body;
  streamed["stream"] = true;
  std::vector<std::string> events;
  StreamResult s = StreamPost(*client, "/generate", streamed, [&](const std::string& e) {
    events.push_back(e);
    return true;
  });
  EXPECT_EQ(s.status, 200);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json err = json::parse(events[events.size() - 2], nullptr, false);
  EXPECT_EQ(err["error"]["code"], 503) << events[events.size() - 2];

  // Short requests are unaffected.
  json g = Ok(*client, "/generate", {{"prompt", "hi"}, {"max_tokens", 3}});
  EXPECT_TRUE(g["text"].is_string());
}

}  // namespace
}  // namespace gritserve::testing
