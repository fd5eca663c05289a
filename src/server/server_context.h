// State shared by the server's routes. HTTP threads use only the thread-safe
// parts of the engine (tokeniser, config) and talk to the model through the
// scheduler.
#pragma once

#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>

#include "gritserve/engine/engine.h"
#include "gritserve/engine/scheduler.h"
#include "gritserve/server/server.h"
#include "metrics.h"

namespace gritserve {

struct ServerContext {
  ServerOptions options;
  std::string model_id;
  std::unique_ptr<Engine> engine;        // set once loading finished
  std::unique_ptr<Scheduler> scheduler;  // set with the engine
  std::atomic<bool> ready{false};
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};
  Metrics metrics;

  // The engine's thread-safe front end: tokenizer, config, documents. Routes
  // use only this and the scheduler.
  FrontEnd& front() const { return engine->front(); }
  KvSource default_kv_source() const { return front().default_kv_source(); }
  int64_t max_input_tokens() const {
    const int64_t ctx = front().max_context();
    return options.max_input_tokens > 0 ? std::min(options.max_input_tokens, ctx) : ctx;
  }
};

// Each registers its routes on the server.
void AddEmbedRoutes(httplib::Server& server, ServerContext& ctx);
void AddGenerateRoutes(httplib::Server& server, ServerContext& ctx);
void AddInfoRoutes(httplib::Server& server, ServerContext& ctx);

// Wraps a route handler: 503 while loading or draining, typed errors mapped to
// their status, metrics, and the in-flight count used for draining.
httplib::Server::Handler Guarded(
    ServerContext& ctx, const std::string& route,
    std::function<void(const httplib::Request&, httplib::Response&)> fn, bool needs_model = true);

// Guarded, for routes with a request body: reads the body itself and stops at
// --max-body-bytes with a 413. httplib 0.11 limits only bodies that declare a
// Content-Length; a chunked body would otherwise be buffered whole, whatever
// its size, before any handler saw it.
httplib::Server::HandlerWithContentReader GuardedBody(
    ServerContext& ctx, const std::string& route,
    std::function<void(const httplib::Request&, httplib::Response&)> fn);

}  // namespace gritserve
