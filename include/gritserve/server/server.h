// The HTTP server: `gritserve [--model DIR] [flags]`.
#pragma once

#include <cstdint>
#include <string>

namespace gritserve {

struct ServerOptions {
  std::string model_dir;      // empty: a generated demo checkpoint (random weights)
  std::string template_path;  // prompt template JSON; empty: the tokenizer's default
  std::string host = "127.0.0.1";
  int port = 8080;
  int threads = 0;  // compute threads; 0: all cores
  std::string device = "cpu";
  std::string dtype = "auto";
  int64_t max_batch_tokens = 8192;
  int64_t max_concurrent_requests = 64;  // queued + running jobs; past it 429
  int64_t cache_bytes = 1LL << 30;       // document KV store budget
  std::string cache_dir;                 // document KV disk tier; empty: memory only
  std::string cache_dtype = "float32";   // float32 or float16/bfloat16 storage
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

// Serves until SIGINT/SIGTERM (then drains) and returns the process exit code.
int RunServer(const ServerOptions& options);

}  // namespace gritserve
