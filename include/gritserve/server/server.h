// The HTTP server: `gritserve [--model DIR] [flags]`.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

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
  double grace_seconds = 30;     // how long SIGTERM waits for in-flight requests
  std::string model_name;        // id reported to clients; default: the directory name
};

// A generation's result as /generate answers it (and the CLI prints it).
nlohmann::json GenerateJson(const GenerateResult& result, bool return_tokens);

// Serves until SIGINT/SIGTERM (then drains) and returns the process exit code.
int RunServer(const ServerOptions& options);

}  // namespace gritserve
