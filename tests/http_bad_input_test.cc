// Malformed and hostile requests against the real server: each gets the right
// 4xx in the one error shape, nothing crashes the process, and the model gives
// the same answers afterwards as before.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server_harness.h"
#include "test_util.h"

namespace gritserve::testing {
namespace {

using json = nlohmann::json;

// The server's token limit per input; small so that "too long" costs little.
constexpr int kMaxInputTokens = 64;

struct BadRequest {
  std::string name;  // shown when the row fails
  std::string method;
  std::string path;
  std::string body;  // raw bytes, sent as given
  int status;
  std::string message = "";  // a substring of error.message ("" = any)
  bool chunked = false;      // send with Transfer-Encoding: chunked
  httplib::Headers headers = {};
};

std::string Repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

// ~700 tokens of the tiny checkpoint's vocabulary, far over kMaxInputTokens.
std::string LongText() { return Repeat("hello world ", 100); }

std::vector<BadRequest> Table() {
  const std::string long_text = LongText();
  json many_texts = json::array();
  json many_id_lists = json::array();
  for (int i = 0; i < 10000; ++i) {
    many_texts.push_back("a");
    many_id_lists.push_back({1});
  }
  // 10 MB: over the default --max-body-bytes (4 MiB) with room to spare.
  const std::string huge_body = R"({"inputs":")" + std::string(10 << 20, 'a') + R"("})";

  return {
      // Not JSON, or not a JSON object.
      {"truncated JSON", "POST", "/embed", R"({"inputs": "he)", 400, "malformed JSON"},
      {"empty body", "POST", "/embed", "", 400, "malformed JSON"},
      {"trailing garbage", "POST", "/embed", R"({"inputs":"x"} trailing)", 400, "malformed JSON"},
      {"NaN literal", "POST", "/generate", R"({"prompt":"x","max_tokens":NaN})", 400,
       "malformed JSON"},
      {"unescaped NUL in a string", "POST", "/embed",
       std::string("{\"inputs\":\"x") + '\0' + "y\"}", 400, "malformed JSON"},
      {"top-level array", "POST", "/embed", "[1,2]", 400, "JSON object"},
      {"top-level string", "POST", "/generate", R"("hello")", 400, "JSON object"},
      {"top-level number", "POST", "/v1/embeddings", "5", 400, "JSON object"},
      {"top-level null", "POST", "/tokenize", "null", 400, "JSON object"},
      // The parser must refuse deep nesting without recursing into a stack overflow.
      {"100000 nested arrays", "POST", "/embed", std::string(100000, '['), 400, "nested"},
      {"100000 nested objects", "POST", "/generate", Repeat(R"({"a":)", 100000), 400, "nested"},

      // Wrong types: 400.
      {"inputs: 5", "POST", "/embed", R"({"inputs":5})", 400, "'inputs' must be"},
      {"inputs: {}", "POST", "/embed", R"({"inputs":{}})", 400, "'inputs' must be"},
      {"inputs: [1.5]", "POST", "/embed", R"({"inputs":[1.5]})", 400, "integers"},
      {"inputs: [[], x]", "POST", "/embed", R"({"inputs":[[],"x"]})", 400, "'inputs' must be"},
      {"inputs: [true]", "POST", "/v1/embeddings", R"({"input":[true]})", 400, "'input' must be"},
      {"normalize: yes", "POST", "/embed", R"({"inputs":"x","normalize":"yes"})", 400, "boolean"},
      {"max_tokens: \"10\"", "POST", "/generate", R"({"prompt":"x","max_tokens":"10"})", 400,
       "integer"},
      {"max_tokens: 2.5", "POST", "/generate", R"({"prompt":"x","max_tokens":2.5})", 400,
       "integer"},
      {"temperature: hot", "POST", "/generate", R"({"prompt":"x","temperature":"hot"})", 400,
       "number"},
      {"stop: 7", "POST", "/generate", R"({"prompt":"x","stop":7})", 400, "'stop'"},
      {"seed: x", "POST", "/generate", R"({"prompt":"x","seed":"x"})", 400, "'seed'"},
      {"stream: 1", "POST", "/v1/completions", R"({"prompt":"x","stream":1})", 400, "boolean"},
      {"stream_options: 5", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":"x"}],"stream_options":5})", 400, "stream_options"},
      {"messages: hi", "POST", "/generate", R"({"messages":"hi"})", 400, "'messages'"},
      {"messages: []", "POST", "/v1/chat/completions", R"({"messages":[]})", 400, "'messages'"},
      {"message without content", "POST", "/generate", R"({"messages":[{"role":"user"}]})", 400,
       "content"},
      {"message without role", "POST", "/v1/chat/completions", R"({"messages":[{"content":"x"}]})",
       400, "role"},
      {"message is a string", "POST", "/v1/chat/completions", R"({"messages":["x"]})", 400,
       "object"},
      {"tokenize inputs: 7", "POST", "/tokenize", R"({"inputs":7})", 400, "'inputs'"},
      {"detokenize ids: [a]", "POST", "/detokenize", R"({"ids":["a"]})", 400, "'ids'"},
      {"v1/rerank document: 5", "POST", "/v1/rerank", R"({"query":"q","documents":[5]})", 400,
       "document"},

      // Nulls and missing or misspelt required fields: 400.
      {"inputs: null", "POST", "/embed", R"({"inputs":null})", 400, "required"},
      {"prompt: null", "POST", "/generate", R"({"prompt":null})", 400, "required"},
      {"no prompt", "POST", "/v1/completions", R"({"max_tokens":4})", 400, "required"},
      {"inputs on /v1/embeddings", "POST", "/v1/embeddings", R"({"inputs":"x"})", 400,
       "'input' is required"},
      {"input on /embed", "POST", "/embed", R"({"input":"x"})", 400, "'inputs' is required"},
      {"rerank without texts", "POST", "/rerank", R"({"query":"q"})", 400, "'texts'"},
      {"rerank with empty texts", "POST", "/rerank", R"({"query":"q","texts":[]})", 400, "'texts'"},
      {"rerank without query", "POST", "/rerank", R"({"texts":["a"]})", 400, "'query'"},
      {"v1/rerank without documents", "POST", "/v1/rerank", R"({"query":"q"})", 400, "'documents'"},

      // Values out of range or unusable: 422.
      {"max_tokens: 1e300", "POST", "/generate", R"({"prompt":"x","max_tokens":1e300})", 422,
       "'max_tokens'"},
      {"max_tokens: 10^20", "POST", "/generate",
       R"({"prompt":"x","max_tokens":99999999999999999999})", 422, "'max_tokens'"},
      {"max_tokens: -5", "POST", "/generate", R"({"prompt":"x","max_tokens":-5})", 422,
       "'max_tokens'"},
      {"max_tokens: 0", "POST", "/v1/completions", R"({"prompt":"x","max_tokens":0})", 422,
       "'max_tokens'"},
      {"max_tokens over --max-tokens", "POST", "/generate", R"({"prompt":"x","max_tokens":5000})",
       422, "'max_tokens'"},
      {"dimensions: 1e9", "POST", "/embed", R"({"inputs":"x","dimensions":1e9})", 422,
       "'dimensions'"},
      {"dimensions: 0", "POST", "/v1/embeddings", R"({"input":"x","dimensions":0})", 422,
       "'dimensions'"},
      {"top_k: -1", "POST", "/generate", R"({"prompt":"x","top_k":-1})", 422, "'top_k'"},
      {"top_p: 0", "POST", "/generate", R"({"prompt":"x","top_p":0})", 422, "'top_p'"},
      {"top_p: 1.5", "POST", "/v1/completions", R"({"prompt":"x","top_p":1.5})", 422, "'top_p'"},
      {"temperature: -1", "POST", "/generate", R"({"prompt":"x","temperature":-1})", 422,
       "'temperature'"},
      {"layer: 0", "POST", "/embed", R"({"inputs":"x","layer":0})", 422, "'layer'"},
      {"layer: 10000", "POST", "/embed", R"({"inputs":"x","layer":10000})", 422, "'layer'"},
      {"n: 2", "POST", "/v1/completions", R"({"prompt":"x","n":2})", 422, "'n'"},
      {"empty stop string", "POST", "/generate", R"({"prompt":"x","stop":[""]})", 422, "'stop'"},
      {"role wizard", "POST", "/generate", R"({"messages":[{"role":"wizard","content":"x"}]})", 422,
       "wizard"},
      {"image content part", "POST", "/v1/chat/completions",
       R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", 422, "text"},
      {"encoding_format: hex", "POST", "/v1/embeddings", R"({"input":"x","encoding_format":"hex"})",
       422, "encoding_format"},
      {"truncation_direction: up", "POST", "/embed",
       R"({"inputs":"x","truncation_direction":"up"})", 422, "truncation_direction"},
      {"pooling: max", "POST", "/embed", R"({"inputs":"x","pooling":"max"})", 422, "pooling"},
      {"token id -1", "POST", "/embed", R"({"inputs":[-1]})", 422, "vocabulary"},
      {"token id 10^9", "POST", "/embed", R"({"inputs":[1000000000]})", 422, "vocabulary"},
      {"prompt token id 10^9", "POST", "/generate", R"({"prompt":[1000000000]})", 422,
       "vocabulary"},
      {"detokenize id -1", "POST", "/detokenize", R"({"ids":[-1]})", 422, "vocabulary"},
      {"empty inputs list", "POST", "/embed", R"({"inputs":[]})", 422, "empty"},
      {"empty inputs string", "POST", "/embed", R"({"inputs":""})", 422, "empty"},
      {"empty token list", "POST", "/v1/embeddings", R"({"input":[[]]})", 422, "empty"},
      {"empty raw prompt", "POST", "/generate", R"({"prompt":"","raw":true})", 422, "empty"},
      {"empty query", "POST", "/rerank", R"({"query":"","texts":["a"]})", 422, "'query'"},
      {"v1/rerank top_n: 0", "POST", "/v1/rerank", R"({"query":"q","documents":["a"],"top_n":0})",
       422, "'top_n'"},
      {"text over --max-input-tokens", "POST", "/embed", json{{"inputs", long_text}}.dump(), 422,
       "truncate"},
      {"prompt over --max-input-tokens", "POST", "/generate", json{{"prompt", long_text}}.dump(),
       422, "limit"},
      {"chat over --max-input-tokens", "POST", "/v1/chat/completions",
       json{{"messages", {{{"role", "user"}, {"content", long_text}}}}}.dump(), 422, "limit"},
      // Invalid UTF-8 inside a JSON string is a bad value, not bad JSON.
      {"UTF-8: ff fe", "POST", "/embed", "{\"inputs\":\"a\xff\xfe b\"}", 422, "UTF-8"},
      {"UTF-8: overlong c0 af", "POST", "/embed", "{\"inputs\":\"a\xc0\xaf b\"}", 422, "UTF-8"},
      {"UTF-8: surrogate ed a0 80", "POST", "/generate", "{\"prompt\":\"a\xed\xa0\x80 b\"}", 422,
       "UTF-8"},
      {"UTF-8: truncated sequence", "POST", "/v1/embeddings", "{\"input\":\"a\xe2\x82\"}", 422,
       "UTF-8"},
      {"UTF-8: in a chat message", "POST", "/v1/chat/completions",
       "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", 422, "UTF-8"},
      {"escaped lone surrogate", "POST", "/embed", R"({"inputs":"a\ud800b"})", 422, "UTF-8"},

      // Too large: 413.
      {"10 MB body", "POST", "/embed", huge_body, 413, "larger than"},
      {"10 MB chunked body", "POST", "/embed", huge_body, 413, "larger than", /*chunked=*/true},
      {"10k inputs", "POST", "/embed", json{{"inputs", many_texts}}.dump(), 413, "limit"},
      {"10k token-id inputs", "POST", "/v1/embeddings", json{{"input", many_id_lists}}.dump(), 413,
       "limit"},
      {"10k rerank texts", "POST", "/rerank", json{{"query", "q"}, {"texts", many_texts}}.dump(),
       413, "'texts'"},

      // Routes and methods.
      {"unknown route", "GET", "/nope", "", 404, "no route"},
      {"unknown POST route", "POST", "/v2/embed", "{}", 404, "no route"},
      {"GET on a POST route", "GET", "/embed", "", 405, "not allowed"},
      {"DELETE on a POST route", "DELETE", "/generate", "", 405, "not allowed"},
      {"POST on a GET route", "POST", "/health", "{}", 405, "not allowed"},
      {"GET on /cache/{id} (DELETE only)", "GET", "/cache/some-id", "", 405, "not allowed"},
      {"POST on /cache/{id} (DELETE only)", "POST", "/cache/some-id", "{}", 405, "not allowed"},
      {"max_completion_tokens: 0 beside max_tokens", "POST", "/v1/completions",
       R"({"prompt":"x","max_tokens":4,"max_completion_tokens":0})", 422,
       "'max_completion_tokens'"},
      // A message quoting the client's text keeps what follows a NUL.
      {"unknown document id with a NUL", "POST", "/generate",
       R"({"prompt":"x","documents":[{"id":"a\u0000b"}]})", 404, std::string("'a") + '\0' + "b'"},

      // The limits are enforced, not merely reported: truncation makes the long
      // text acceptable.
      {"truncate: true", "POST", "/embed", json{{"inputs", long_text}, {"truncate", true}}.dump(),
       200},
      {"truncate left", "POST", "/embed",
       json{{"inputs", long_text}, {"truncate", true}, {"truncation_direction", "LEFT"}}.dump(),
       200},
  };
}

httplib::Result Send(httplib::Client& client, const BadRequest& r) {
  if (r.chunked) {
    // No Content-Length: httplib's own payload limit does not see this body.
    return client.Post(
        r.path, r.headers,
        [&r](size_t offset, httplib::DataSink& sink) {
          constexpr size_t kChunk = 1 << 20;
          if (offset >= r.body.size()) {
            sink.done();
            return true;
          }
          return sink.write(r.body.data() + offset, std::min(kChunk, r.body.size() - offset));
        },
        "application/json");
  }
  httplib::Request req;
  req.method = r.method;
  req.path = r.path;
  req.headers = r.headers;
  req.body = r.body;
  if (r.method == "POST" && !req.has_header("Content-Type")) {
    req.set_header("Content-Type", "application/json");
  }
  return client.send(req);
}

// {"error": {"message": str, "type": str, "code": status}} as application/json.
void ExpectErrorShape(const httplib::Response& res, int status, const std::string& message) {
  EXPECT_EQ(res.get_header_value("Content-Type").rfind("application/json", 0), 0u)
      << res.get_header_value("Content-Type");
  const json j = json::parse(res.body, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << "not a JSON object: " << res.body.substr(0, 300);
  ASSERT_EQ(j.size(), 1u) << res.body;
  ASSERT_TRUE(j.contains("error") && j["error"].is_object()) << res.body;
  const json& e = j["error"];
  ASSERT_TRUE(e.contains("message") && e["message"].is_string()) << res.body;
  EXPECT_FALSE(e["message"].get<std::string>().empty());
  ASSERT_TRUE(e.contains("type") && e["type"].is_string()) << res.body;
  EXPECT_FALSE(e["type"].get<std::string>().empty());
  ASSERT_TRUE(e.contains("code") && e["code"].is_number_integer()) << res.body;
  EXPECT_EQ(e["code"].get<int>(), status);
  EXPECT_NE(e["message"].get<std::string>().find(message), std::string::npos)
      << "message lacks '" << message << "': " << e["message"];
}

json PostOk(httplib::Client& client, const std::string& path, const json& body) {
  auto res = client.Post(path, body.dump(), "application/json");
  if (!res) {
    ADD_FAILURE() << path << ": no response: " << httplib::to_string(res.error());
    return json();
  }
  EXPECT_EQ(res->status, 200) << path << ": " << res->body;
  return json::parse(res->body, nullptr, /*allow_exceptions=*/false);
}

// A reference embedding and greedy generation, taken before and after the
// table: hostile requests must leave no trace in the model's state.
struct Reference {
  std::vector<float> embedding;
  std::string text;
  std::vector<int> tokens;
};

Reference TakeReference(httplib::Client& client) {
  Reference r;
  const json emb = PostOk(client, "/embed", {{"inputs", "the quick brown fox"}});
  if (emb.is_array() && emb.size() == 1) r.embedding = emb[0].get<std::vector<float>>();
  const json gen = PostOk(client, "/generate",
                          {{"prompt", "the quick brown"},
                           {"raw", true},
                           {"max_tokens", 8},
                           {"temperature", 0},
                           {"ignore_eos", true},
                           {"return_tokens", true}});
  if (gen.is_object()) {
    r.text = gen.value("text", "");
    r.tokens = gen.value("tokens", std::vector<int>{});
  }
  return r;
}

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess(TinyCheckpointDir(),
                                {"--max-input-tokens", std::to_string(kMaxInputTokens)});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static ServerProcess* server_;
};

ServerProcess* BadInputTest::server_ = nullptr;

TEST_F(BadInputTest, EveryBadRequestGetsItsStatusAndTheServerIsUnharmed) {
  auto client = server_->Client();
  const Reference before = TakeReference(*client);
  ASSERT_EQ(before.embedding.size(), 64u);
  ASSERT_EQ(before.tokens.size(), 8u);

  const std::vector<BadRequest> table = Table();
  ASSERT_GE(table.size(), 30u);
  RecordProperty("rows", static_cast<int>(table.size()));
  for (const BadRequest& r : table) {
    SCOPED_TRACE(r.name + " (" + r.method + " " + r.path + ")");
    auto res = Send(*client, r);
    ASSERT_TRUE(res) << "no response: " << httplib::to_string(res.error()) << "\nserver log:\n"
                     << server_->Log();
    EXPECT_EQ(res->status, r.status) << res->body.substr(0, 300);
    if (r.status == 200) {
      const json j = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
      EXPECT_TRUE(j.is_array() && j.size() == 1 && j[0].size() == 64u) << res->body.substr(0, 300);
    } else {
      ExpectErrorShape(*res, r.status, r.message);
    }
    ASSERT_TRUE(server_->Running()) << "the server died\n" << server_->Log();
  }

  ASSERT_TRUE(server_->Running()) << server_->Log();
  auto health = client->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const Reference after = TakeReference(*client);
  ASSERT_EQ(after.embedding.size(), before.embedding.size());
  for (size_t i = 0; i < before.embedding.size(); ++i) {
    EXPECT_NEAR(after.embedding[i], before.embedding[i], 1e-6) << "dimension " << i;
  }
  EXPECT_EQ(after.tokens, before.tokens);
  EXPECT_EQ(after.text, before.text);
}

// A plain TCP connection to the server, with 10 s send and receive timeouts (a
// hang, or a server that stops reading without closing, ends the test instead
// of stalling it). Returns -1 on failure.
int ConnectRaw(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Requests that httplib itself refuses (bad request line) get the same shape.
TEST_F(BadInputTest, GarbageRequestLineGetsAJsonError) {
  const int fd = ConnectRaw(server_->port());
  ASSERT_GE(fd, 0);
  const std::string garbage = "GARBAGE\r\n\r\n";
  ASSERT_EQ(::write(fd, garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) {
    reply.append(buf, static_cast<size_t>(n));
    if (reply.find("}}") != std::string::npos) break;  // the whole error body is in
  }
  ::close(fd);
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
  EXPECT_NE(reply.find("application/json"), std::string::npos) << reply;
  EXPECT_NE(reply.find(R"("code":400)"), std::string::npos) << reply;
  EXPECT_TRUE(server_->Running()) << server_->Log();
}

// Peak resident memory of a process, from /proc: bytes.
int64_t PeakRss(pid_t pid) { return ProcStatusBytes("VmHWM:", pid); }

// A chunked body that never ends: the server must stop reading it soon after
// the limit (4 MiB, plus at most 64 MiB read and dropped) and never buffer it.
TEST_F(BadInputTest, EndlessChunkedBodyIsCutOffWithoutBeingBuffered) {
  const int64_t peak_before = PeakRss(server_->pid());
  ASSERT_GT(peak_before, 0);
  const int fd = ConnectRaw(server_->port());
  ASSERT_GE(fd, 0);
  auto send_all = [fd](const std::string& data) {
    for (size_t off = 0; off < data.size();) {
      const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  };
  ASSERT_TRUE(
      send_all("POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
               "application/json\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const std::string chunk = "100000\r\n" + std::string(1 << 20, 'a') + "\r\n";  // 1 MiB
  constexpr int64_t kMaxChunks = 1024;  // 1 GiB: far past anything the server may read
  int64_t sent = 0;
  while (sent < kMaxChunks && send_all(chunk)) ++sent;
  EXPECT_LT(sent, 256) << "the server kept reading an over-limit body";
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;)
    reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  // The 413 is sent before the connection closes, but a reset can overtake it.
  if (!reply.empty()) {
    EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply.substr(0, 200);
  }
  EXPECT_LT(PeakRss(server_->pid()) - peak_before, int64_t{200} << 20)
      << "peak RSS grew: the body was buffered";
  ASSERT_TRUE(server_->Running()) << server_->Log();
  auto health = server_->Client()->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

}  // namespace
}  // namespace gritserve::testing
