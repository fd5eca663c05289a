// The HTTP server: `gritserve [--model DIR] [flags]`.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "gritserve/collection/collection.h"
#include "gritserve/engine/types.h"

namespace gritserve {

struct ServerOptions {
  // The model and how it runs; an empty model_dir serves a generated demo
  // checkpoint (random weights).
  EngineOptions engine;
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t max_concurrent_requests = 64;  // queued + running jobs; past it 429
  std::string api_key;                   // empty: no authentication
  // Limits, each refused with a clear 4xx.
  int64_t max_body_bytes = 4 << 20;
  int64_t max_inputs = 256;      // inputs per request
  int64_t max_input_tokens = 0;  // tokens per input; 0: the model's context
  int64_t max_tokens = 4096;     // upper bound for a request's max_tokens
  int64_t http_threads = 0;      // 0: max_concurrent_requests + 8
  // The HTTP front: open connections at once, and deadlines (seconds) that a
  // trickle of bytes does not extend.
  int64_t max_connections = 1024;
  double header_timeout = 10;  // from a request's first byte to the end of its headers
  double body_timeout = 60;    // the whole body
  double idle_timeout = 60;    // a kept-alive connection between requests
  double write_timeout = 60;   // a client taking each response write
  double grace_seconds = 30;     // how long SIGTERM waits for in-flight requests
  double request_timeout = 0;    // seconds a request may wait for the model; 0: no limit
  std::string model_name;        // id reported to clients; default: the directory name
  // Document collections (/v1/collections): where they persist (data_dir,
  // empty: memory only), their index settings and size limit.
  CollectionOptions collections;
  int64_t max_collection_batch = 256;  // documents per add request; past it 413
};

// A generation's result as /generate answers it (and the CLI prints it).
nlohmann::json GenerateJson(const GenerateResult& result, bool return_tokens);

// GET /health of a server at host:port within timeout_seconds: the status and
// body; Error(kUnavailable) when it does not answer.
std::pair<int, std::string> ProbeHealth(const std::string& host, int port, double timeout_seconds);

// Serves until SIGINT/SIGTERM (then drains) and returns the process exit code.
int RunServer(const ServerOptions& options);

}  // namespace gritserve
