// The HTTP front against hostile and careless clients, over raw sockets:
// stalled and trickling connections, the connection cap, pipelining, Range,
// framing errors (answered at once, never after a timeout), duplicate
// Content-Length, and keep-alive latency.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "http_api_util.h"

namespace gritserve::testing {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A plain TCP connection with `timeout_s` send and receive timeouts, so a
// server that never answers ends the read instead of stalling the test.
class Conn {
 public:
  explicit Conn(int port, int timeout_s = 10) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval timeout{timeout_s, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool ok() const { return fd_ >= 0; }
  bool Send(const std::string& data) {
    for (size_t off = 0; off < data.size();) {
      const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  void ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }

  // One HTTP response (headers, and a Content-Length body); nullopt when the
  // connection ended or timed out first.
  std::optional<std::string> ReadResponse() {
    while (true) {
      const size_t end = buf_.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t length = 0;
        std::string head = buf_.substr(0, end);
        std::string lower = head;
        std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
        const size_t cl = lower.find("content-length:");
        if (cl != std::string::npos) length = std::stoul(head.substr(cl + 15));
        if (buf_.size() >= end + 4 + length) {
          std::string response = buf_.substr(0, end + 4 + length);
          buf_.erase(0, end + 4 + length);
          return response;
        }
      }
      char chunk[65536];
      const ssize_t n = ::read(fd_, chunk, sizeof(chunk));
      if (n <= 0) return std::nullopt;
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

int StatusOf(const std::optional<std::string>& response) {
  if (!response || response->rfind("HTTP/1.1 ", 0) != 0) return -1;
  return std::stoi(response->substr(9, 3));
}

std::string BodyOf(const std::string& response) {
  return response.substr(response.find("\r\n\r\n") + 4);
}

std::string Post(const std::string& path, const std::string& body,
                 const std::string& extra_headers = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
         extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

class HttpFrontTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess(TinyCheckpointDir(), {"--header-timeout", "1", "--body-timeout",
                                                      "1", "--max-connections", "400"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void TearDown() override { ASSERT_TRUE(server_->Running()) << server_->Log(); }

  // A framing error: answered with `status` and the JSON error shape well
  // before any timeout would fire (the header deadline here is 1 s).
  void ExpectPromptError(const std::string& request, int status, bool shutdown_write = false) {
    Conn c(server_->port());
    ASSERT_TRUE(c.ok());
    const auto t0 = Clock::now();
    ASSERT_TRUE(c.Send(request));
    if (shutdown_write) c.ShutdownWrite();
    const auto response = c.ReadResponse();
    EXPECT_EQ(StatusOf(response), status)
        << request.substr(0, 120) << " -> " << response.value_or("(nothing)");
    EXPECT_LT(SecondsSince(t0), 0.9) << "answered only after a timeout";
    if (response) {
      const json body = json::parse(BodyOf(*response), nullptr, false);
      EXPECT_EQ(body["error"]["code"], status) << *response;
    }
  }

  static ServerProcess* server_;
};

ServerProcess* HttpFrontTest::server_ = nullptr;

// 200 connections that sent half a header hold no thread: /health answers at once.
TEST_F(HttpFrontTest, StalledConnectionsDoNotStallOthers) {
  std::vector<std::unique_ptr<Conn>> stalled;
  for (int i = 0; i < 200; ++i) {
    stalled.push_back(std::make_unique<Conn>(server_->port()));
    ASSERT_TRUE(stalled.back()->ok());
    ASSERT_TRUE(stalled.back()->Send("POST /embed HTTP/1.1\r\nHost: x\r\nContent-"));
  }
  for (int round = 0; round < 3; ++round) {
    const auto t0 = Clock::now();
    auto res = server_->Client()->Get("/health");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_LT(SecondsSince(t0), 1.0) << "/health waited behind stalled connections";
    // A real request too, which needs a worker.
    auto tok = PostJson(*server_->Client(), "/tokenize", {{"inputs", "hello"}});
    ASSERT_TRUE(tok);
    EXPECT_EQ(tok->status, 200);
  }
}

// /metrics counts open connections, and stalled ones leave at their deadline.
// The connections are counted while they idle before their first byte (the
// idle timeout is a minute), so the count is a steady state and not a race
// with the 1 s header deadline; only then does each send half a header.
TEST_F(HttpFrontTest, OpenConnectionsAreCountedAndReleased) {
  auto client = server_->Client();
  // Every poll on one kept-alive connection: a connection per poll would add
  // the last poll's, still closing, to the count the test compares.
  client->set_keep_alive(true);
  const double base = Metric(*client, "gritserve_open_connections");
  ASSERT_GE(base, 1) << "the metrics request's own connection is open";
  std::vector<std::unique_ptr<Conn>> stalled;
  for (int i = 0; i < 20; ++i) {
    stalled.push_back(std::make_unique<Conn>(server_->port()));
    ASSERT_TRUE(stalled.back()->ok());
  }
  // At least the 20 and the metrics request's own connection: `base` may
  // also hold an earlier test's connection that is still closing.
  EXPECT_TRUE(WaitFor([&] { return Metric(*client, "gritserve_open_connections") >= 1 + 20; },
                      std::chrono::milliseconds(10000)))
      << Metric(*client, "gritserve_open_connections") << " open, " << base << " before";
  for (auto& c : stalled) ASSERT_TRUE(c->Send("GET /health HTTP/1.1\r\nHo"));
  // The header deadline (1 s) answers and closes every stalled connection.
  EXPECT_TRUE(WaitFor([&] { return Metric(*client, "gritserve_open_connections") <= base; },
                      std::chrono::milliseconds(10000)))
      << Metric(*client, "gritserve_open_connections");
}

// A client trickling its header a byte at a time does not extend the deadline.
TEST_F(HttpFrontTest, TricklingHeaderMeetsItsDeadline) {
  Conn c(server_->port());
  ASSERT_TRUE(c.ok());
  const std::string request =
      "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + std::string(100, 'a') + "\r\n\r\n";
  const auto t0 = Clock::now();
  bool closed = false;
  for (char ch : request) {
    if (!c.Send(std::string(1, ch))) {
      closed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (SecondsSince(t0) > 3) break;
  }
  const auto response = c.ReadResponse();
  // The whole header would have taken over 6 s; the deadline is 1 s.
  EXPECT_TRUE(closed || StatusOf(response) == 408) << response.value_or("(nothing)");
  EXPECT_LT(SecondsSince(t0), 4.0);
}

TEST_F(HttpFrontTest, SlowBodyMeetsItsDeadline) {
  Conn c(server_->port());
  ASSERT_TRUE(c.ok());
  const auto t0 = Clock::now();
  ASSERT_TRUE(c.Send("POST /tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"));
  EXPECT_EQ(StatusOf(c.ReadResponse()), 408);
  EXPECT_LT(SecondsSince(t0), 3.0);
}

// Three requests in one write get three answers, in order.
TEST_F(HttpFrontTest, PipelinedRequestsAreAnsweredInOrder) {
  Conn c(server_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send(Post("/tokenize", R"({"inputs": "a"})") +
                     "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n" +
                     Post("/tokenize", R"({"inputs": "hello world"})")));
  const auto first = c.ReadResponse(), second = c.ReadResponse(), third = c.ReadResponse();
  ASSERT_EQ(StatusOf(first), 200) << first.value_or("(nothing)");
  ASSERT_EQ(StatusOf(second), 200) << second.value_or("(nothing)");
  ASSERT_EQ(StatusOf(third), 200) << third.value_or("(nothing)");
  EXPECT_EQ(json::parse(BodyOf(*first))[0].size(), 1u) << *first;
  EXPECT_EQ(json::parse(BodyOf(*second))["status"], "ok") << *second;
  const json third_tokens = json::parse(BodyOf(*third))[0];
  EXPECT_EQ(third_tokens.back()["stop"], 11) << *third;  // the end of "hello world"
}

// Range has no meaning for these responses: the whole body, as without it.
TEST_F(HttpFrontTest, RangeIsIgnored) {
  const std::string body = R"({"inputs": "the quick brown fox jumps over the lazy dog"})";
  Conn plain(server_->port()), ranged(server_->port()), multi(server_->port());
  ASSERT_TRUE(plain.Send(Post("/tokenize", body)));
  ASSERT_TRUE(ranged.Send(Post("/tokenize", body, "Range: bytes=0-9\r\n")));
  ASSERT_TRUE(multi.Send(Post("/tokenize", body, "Range: bytes=0-,0-,0-,0-,0-,0-\r\n")));
  const auto a = plain.ReadResponse(), b = ranged.ReadResponse(), m = multi.ReadResponse();
  ASSERT_EQ(StatusOf(a), 200);
  ASSERT_EQ(StatusOf(b), 200) << b.value_or("");
  ASSERT_EQ(StatusOf(m), 200) << m.value_or("");
  EXPECT_EQ(BodyOf(*b), BodyOf(*a));
  EXPECT_EQ(BodyOf(*m), BodyOf(*a));
  EXPECT_EQ(b->find("Content-Range"), std::string::npos);
}

TEST_F(HttpFrontTest, PostWithoutLengthIsAnsweredAtOnce) {
  ExpectPromptError("POST /tokenize HTTP/1.1\r\nHost: localhost\r\n\r\n{}", 411);
}

TEST_F(HttpFrontTest, BadContentLengthsAreRefusedAtOnce) {
  ExpectPromptError("POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", 400);
  ExpectPromptError(
      "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
      400);
  ExpectPromptError("POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n{}", 400);
}

// Two Content-Length headers are a request-smuggling vector behind a proxy.
TEST_F(HttpFrontTest, DuplicateContentLengthIsRefused) {
  ExpectPromptError(
      "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\n{}",
      400);
  ExpectPromptError(
      "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
      400);
  ExpectPromptError(
      "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: "
      "chunked\r\n\r\n{}",
      400);
  ExpectPromptError("POST /tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}", 400);
}

// A body that ends (the client closed its side) short of its length.
TEST_F(HttpFrontTest, ShortBodyIsAnsweredWhenTheClientStops) {
  ExpectPromptError("POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}", 400,
                    /*shutdown_write=*/true);
}

TEST_F(HttpFrontTest, OversizedHeaderGets431) {
  ExpectPromptError(
      "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 << 10, 'a') + "\r\n\r\n", 431);
}

TEST_F(HttpFrontTest, DeclaredOversizedBodyGets413BeforeItIsSent) {
  ExpectPromptError("POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413);
}

// curl sends Expect: 100-continue for larger bodies and waits for the interim answer.
TEST_F(HttpFrontTest, ExpectContinueIsHonoured) {
  Conn c(server_->port());
  ASSERT_TRUE(c.ok());
  const std::string body = R"({"inputs": "hello"})";
  ASSERT_TRUE(
      c.Send("POST /tokenize HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
             "Content-Length: " +
             std::to_string(body.size()) + "\r\n\r\n"));
  const auto interim = c.ReadResponse();
  ASSERT_EQ(StatusOf(interim), 100) << interim.value_or("(nothing)");
  ASSERT_TRUE(c.Send(body));
  EXPECT_EQ(StatusOf(c.ReadResponse()), 200);
}

// Small responses on a reused connection are not held back by Nagle's
// algorithm against the client's delayed ACK (a fixed stall of tens of ms).
TEST_F(HttpFrontTest, KeepAliveRequestsAreNotDelayed) {
  Conn c(server_->port());
  ASSERT_TRUE(c.ok());
  std::vector<double> seconds;
  for (int i = 0; i < 21; ++i) {
    const auto t0 = Clock::now();
    ASSERT_TRUE(c.Send(Post("/tokenize", R"({"inputs": "hi"})")));
    ASSERT_EQ(StatusOf(c.ReadResponse()), 200);
    seconds.push_back(SecondsSince(t0));
  }
  std::sort(seconds.begin(), seconds.end());
  EXPECT_LT(seconds[seconds.size() / 2], 0.030) << "median request on a kept-alive connection";
}

// Past --max-connections a new connection is told so and closed; the server
// recovers once they go.
TEST(HttpFrontCapTest, ConnectionCapRefusesWithAJsonError) {
  ServerProcess server(TinyCheckpointDir(), {"--max-connections", "4"});
  {
    std::vector<std::unique_ptr<Conn>> held;
    for (int i = 0; i < 4; ++i) {
      held.push_back(std::make_unique<Conn>(server.port()));
      ASSERT_TRUE(held.back()->ok());
      // Answered, and kept alive: the server has accepted and counts it
      // (no sleep that a loaded machine could outrun).
      held.back()->Send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
      ASSERT_EQ(StatusOf(held.back()->ReadResponse()), 200) << "held connection " << i;
    }
    Conn extra(server.port());
    ASSERT_TRUE(extra.ok());
    extra.Send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    const auto response = extra.ReadResponse();
    ASSERT_EQ(StatusOf(response), 503) << response.value_or("(nothing)");
    EXPECT_EQ(json::parse(BodyOf(*response))["error"]["code"], 503);
  }
  // The server sees the closes on its own time: poll, within a bound.
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto res = server.Client()->Get("/health");
    status = res ? res->status : 0;
  }
  EXPECT_EQ(status, 200) << "the server recovers once the held connections go";
}

}  // namespace
}  // namespace gritserve::testing
