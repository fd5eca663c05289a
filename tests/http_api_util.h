// Helpers shared by the http_api*_test files: JSON requests, the error shape,
// SSE parsing, Prometheus scraping, and a slower checkpoint for long generations.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server_harness.h"
#include "test_util.h"

namespace gritserve::testing {

using json = nlohmann::json;

inline httplib::Result PostJson(httplib::Client& c, const std::string& path, const json& body) {
  return c.Post(path.c_str(), body.dump(), "application/json");
}

// Parses a response body, failing the test (not crashing) on bad JSON.
inline json BodyJson(const httplib::Result& res) {
  if (!res) {
    ADD_FAILURE() << "no response: " << httplib::to_string(res.error());
    return json();
  }
  json j = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) ADD_FAILURE() << "not JSON: " << res->body.substr(0, 300);
  return j;
}

// POSTs `body` and expects 200 with a JSON body.
inline json Ok(httplib::Client& c, const std::string& path, const json& body) {
  auto res = PostJson(c, path, body);
  if (!res) {
    ADD_FAILURE() << path << ": no response: " << httplib::to_string(res.error());
    return json();
  }
  EXPECT_EQ(res->status, 200) << path << " " << body.dump() << " -> " << res->body;
  return BodyJson(res);
}

// The one error shape: {"error": {"message": str, "type": str, "code": status}}.
inline void ExpectError(const httplib::Result& res, int status, const std::string& what = "") {
  ASSERT_TRUE(res) << what << ": no response";
  EXPECT_EQ(res->status, status) << what << ": " << res->body;
  json j = json::parse(res->body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << what << ": not JSON: " << res->body;
  ASSERT_TRUE(j.contains("error") && j["error"].is_object()) << what << ": " << res->body;
  const json& e = j["error"];
  EXPECT_TRUE(e.contains("message") && e["message"].is_string() &&
              !e["message"].get<std::string>().empty())
      << what << ": " << res->body;
  EXPECT_TRUE(e.contains("type") && e["type"].is_string()) << what << ": " << res->body;
  EXPECT_TRUE(e.contains("code") && e["code"] == status) << what << ": " << res->body;
}

// Splits an SSE byte stream into the payloads of its `data: ` events; bytes
// arrive in arbitrary pieces, so incomplete events stay buffered.
class SseParser {
 public:
  // Returns the events completed by `bytes`.
  std::vector<std::string> Feed(const char* data, size_t size) {
    buffer_.append(data, size);
    std::vector<std::string> out;
    size_t end;
    while ((end = buffer_.find("\n\n")) != std::string::npos) {
      std::string event = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      if (event.rfind("data: ", 0) == 0) {
        out.push_back(event.substr(6));
      } else {
        ADD_FAILURE() << "SSE event without 'data: ': " << event;
      }
    }
    return out;
  }
  const std::string& rest() const { return buffer_; }

 private:
  std::string buffer_;
};

struct StreamResult {
  int status = -1;
  std::string content_type;
  std::vector<std::string> events;  // payloads, "[DONE]" included
  httplib::Error error = httplib::Error::Success;
};

// POSTs a streaming request and calls `on_event(payload)` for each event as it
// arrives; returning false closes the connection (a client going away).
inline StreamResult StreamPost(httplib::Client& c, const std::string& path, const json& body,
                               std::function<bool(const std::string&)> on_event = nullptr) {
  StreamResult out;
  SseParser parser;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string error_body;
  req.response_handler = [&](const httplib::Response& r) {
    out.status = r.status;
    out.content_type = r.get_header_value("Content-Type");
    return true;
  };
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    if (out.status != 200) {
      error_body.append(data, size);
      return true;
    }
    for (auto& e : parser.Feed(data, size)) {
      out.events.push_back(e);
      if (on_event && !on_event(e)) return false;
    }
    return true;
  };
  auto res = c.send(req);
  out.error = res.error();
  if (out.status != 200) {
    out.events.push_back(error_body);
  } else if (res) {
    EXPECT_EQ(parser.rest(), "") << "trailing bytes after the last SSE event";
  }
  return out;
}

// Parses every event but the final "[DONE]" as JSON.
inline std::vector<json> JsonEvents(const StreamResult& s) {
  std::vector<json> out;
  for (const auto& e : s.events) {
    if (e == "[DONE]") continue;
    json j = json::parse(e, nullptr, false);
    if (j.is_discarded()) {
      ADD_FAILURE() << "SSE event is not JSON: " << e;
      continue;
    }
    out.push_back(std::move(j));
  }
  return out;
}

inline std::string MetricsText(httplib::Client& c) {
  auto res = c.Get("/metrics");
  if (!res || res->status != 200) {
    ADD_FAILURE() << "/metrics failed";
    return "";
  }
  return res->body;
}

// The value of the sample whose name-with-labels is exactly `series`, or -1.
inline double Metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
    }
  }
  return -1;
}

inline double Metric(httplib::Client& c, const std::string& series) {
  return Metric(MetricsText(c), series);
}

// Polls `pred` every 20 ms for up to `timeout`; true once it holds.
inline bool WaitFor(const std::function<bool()>& pred,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// The "demo" preset (hidden 256, 4 layers): about 1.5 ms a token here, so a few
// thousand tokens take seconds; the tiny preset's 0.25 ms a token is too quick
// to catch a generation in flight reliably.
inline std::string SlowCheckpointDir() {
  static std::once_flag once;
  static std::string dir;
  std::call_once(once, [] {
    dir = MakeTempDir("http-demo");
    const std::string cmd =
        BinaryPath() + " make-checkpoint --preset demo --out " + dir + " > " + dir + ".log 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      throw std::runtime_error("make-checkpoint failed: " + ReadFile(dir + ".log"));
    }
  });
  return dir;
}

// One server shared by every test of a suite (a fresh process per suite keeps
// the suites independent). `Derived` makes the static members per suite and
// may hide StartServer to use another checkpoint or flags.
template <typename Derived>
class SharedServerTest : public ::testing::Test {
 protected:
  static ServerProcess* StartServer() { return new ServerProcess(TinyCheckpointDir()); }

  static void SetUpTestSuite() {
    try {
      server_ = Derived::StartServer();
    } catch (const std::exception& e) {
      start_error_ = e.what();
    }
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr) << start_error_;
    client_ = server_->Client();
  }

  static inline ServerProcess* server_ = nullptr;
  static inline std::string start_error_;
  std::unique_ptr<httplib::Client> client_;
};

}  // namespace gritserve::testing
