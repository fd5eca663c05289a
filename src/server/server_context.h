// State shared by the server's routes. HTTP threads use only the thread-safe
// parts of the engine (tokeniser, config) and talk to the model through the
// scheduler.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "gritserve/collection/collection.h"
#include "gritserve/engine/engine.h"
#include "gritserve/engine/scheduler.h"
#include "gritserve/engine/sequence.h"
#include "gritserve/server/server.h"
#include "http_server.h"
#include "metrics.h"

namespace gritserve {

struct ServerContext {
  ServerOptions options;
  std::string model_id;
  std::unique_ptr<Engine> engine;        // set once loading finished
  std::unique_ptr<Scheduler> scheduler;  // set with the engine
  std::unique_ptr<CollectionStore> collections;  // set with the engine (vectors of its width)
  std::atomic<bool> ready{false};
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};
  Metrics metrics;
  const http::HttpServer* http = nullptr;  // set before it starts; for its connection count

  // The engine's thread-safe front end: tokenizer, config, documents. Routes
  // use only this and the scheduler.
  FrontEnd& front() const { return engine->front(); }
  KvSource default_kv_source() const { return front().default_kv_source(); }
  int64_t max_input_tokens() const {
    const int64_t ctx = front().max_context();
    return options.max_input_tokens > 0 ? std::min(options.max_input_tokens, ctx) : ctx;
  }
};

using RouteFn = std::function<void(const http::Request&, http::Response&)>;

// The routes and what wraps them: every request is dispatched from here.
class Routes {
 public:
  struct Route {
    std::string method;
    std::string path;     // exact, or a prefix when `prefix` (e.g. "/cache/")
    std::string metric;   // the route's name in /metrics
    bool prefix = false;
    bool guarded = true;  // through RunGuarded (503 while loading or draining, errors, metrics)
    bool needs_model = true;
    RouteFn fn;
  };

  void Add(Route route) { routes_.push_back(std::move(route)); }
  // The route for method and path; null when none, with *path_known telling
  // whether another method has that path (405 rather than 404).
  const Route* Find(const std::string& method, const std::string& path, bool* path_known) const;

 private:
  std::vector<Route> routes_;
};

// Each registers its routes.
void AddEmbedRoutes(Routes& routes, ServerContext& ctx);
void AddGenerateRoutes(Routes& routes, ServerContext& ctx);
void AddInfoRoutes(Routes& routes, ServerContext& ctx);
void AddCollectionRoutes(Routes& routes, ServerContext& ctx);

// When a request waiting now must have its result (--request-timeout).
std::chrono::steady_clock::time_point RequestDeadline(const ServerContext& ctx);
// The error for a request past that deadline.
Error RequestTimedOut(const ServerContext& ctx);

// The result of a submitted job, or RequestTimedOut past the deadline (the
// job still runs when its turn comes; its result is dropped).
template <typename T>
T AwaitResult(const ServerContext& ctx, std::future<T> result) {
  if (result.wait_until(RequestDeadline(ctx)) != std::future_status::ready) {
    throw RequestTimedOut(ctx);
  }
  return result.get();
}

// A generation's result, or RequestTimedOut past the deadline, with the
// sequence cancelled.
GenerateResult AwaitResult(const ServerContext& ctx, Sequence& seq);

// Holds a request in flight (counted for draining) for as long as it lives,
// e.g. inside a streamed response's producer.
std::shared_ptr<void> InFlight(ServerContext& ctx);

}  // namespace gritserve
