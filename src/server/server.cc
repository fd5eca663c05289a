// Server start-up, middleware (auth, errors, metrics), and graceful shutdown.
#include "gritserve/server/server.h"

#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "gritserve/common/allocator.h"
#include "gritserve/engine/checkpoint.h"
#include "http_util.h"
#include "server_context.h"

namespace gritserve {
namespace {

std::string DemoCheckpointDir() {
  const char* cache = std::getenv("XDG_CACHE_HOME");
  std::filesystem::path base = cache != nullptr && *cache != '\0'
                                   ? std::filesystem::path(cache)
                                   : std::filesystem::temp_directory_path();
  return (base / "gritserve-demo-checkpoint").string();
}

// Several servers may start at once on one cache directory (replicas sharing a
// volume, where each is PID 1 of its container): each writes its own temporary
// copy, and the first rename wins; the others keep the winner's.
void WriteDemoCheckpoint(const std::string& dir) {
  std::random_device rd;
  const std::string tmp = dir + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  WriteCheckpoint(tmp, CheckpointPreset("demo"));
  std::error_code ec;
  if (std::filesystem::exists(dir) && !std::filesystem::exists(dir + "/config.json")) {
    std::filesystem::remove_all(dir, ec);  // an interrupted write of an older version
  }
  std::filesystem::rename(tmp, dir, ec);
  if (ec) {
    std::filesystem::remove_all(tmp);
    if (!std::filesystem::exists(dir + "/config.json")) {
      throw LoadError("cannot place the demo checkpoint at " + dir + ": " + ec.message());
    }
  }
}

bool Authorized(const http::Request& req, const std::string& key) {
  if (req.Header("Authorization") == "Bearer " + key) return true;
  return req.Header("x-api-key") == key;
}

void LoadModel(ServerContext& ctx) {
  ServerOptions& o = ctx.options;
  if (o.engine.model_dir.empty()) {
    o.engine.model_dir = DemoCheckpointDir();
    spdlog::warn("==================================================================");
    spdlog::warn("no --model given: serving a GENERATED DEMO CHECKPOINT with RANDOM");
    spdlog::warn("WEIGHTS from {}; its outputs are meaningless.", o.engine.model_dir);
    spdlog::warn("Pass --model DIR with a Hugging Face checkpoint for real use.");
    spdlog::warn("==================================================================");
    if (!std::filesystem::exists(o.engine.model_dir + "/config.json"))
      WriteDemoCheckpoint(o.engine.model_dir);
    if (ctx.model_id.empty()) ctx.model_id = "gritserve-demo-random";
  }
  if (ctx.model_id.empty()) {
    ctx.model_id = std::filesystem::path(o.engine.model_dir).lexically_normal().filename().string();
    if (ctx.model_id.empty()) {
      ctx.model_id = std::filesystem::path(o.engine.model_dir).parent_path().filename().string();
    }
  }
  ctx.engine = Engine::Load(o.engine);
  ctx.scheduler = std::make_unique<Scheduler>(ctx.engine->runner(), o.max_concurrent_requests);
  ctx.collections =
      std::make_unique<CollectionStore>(o.collections, ctx.front().config().hidden_size);
  ctx.ready = true;
}

}  // namespace

const Routes::Route* Routes::Find(const std::string& method, const std::string& path,
                                  bool* path_known) const {
  *path_known = false;
  for (const Route& r : routes_) {
    const bool match = r.prefix ? path.size() > r.path.size() && path.rfind(r.path, 0) == 0
                                : path == r.path;
    if (!match) continue;
    if (r.method == method) return &r;
    *path_known = true;
  }
  return nullptr;
}

std::chrono::steady_clock::time_point RequestDeadline(const ServerContext& ctx) {
  const double s = ctx.options.request_timeout;
  if (s <= 0) return std::chrono::steady_clock::time_point::max();
  return std::chrono::steady_clock::now() +
         std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

Error RequestTimedOut(const ServerContext& ctx) {
  return Error(ErrorKind::kUnavailable, "the request took longer than --request-timeout (" +
                                            std::to_string(ctx.options.request_timeout) +
                                            " s); retry later");
}

GenerateResult AwaitResult(const ServerContext& ctx, Sequence& seq) {
  if (!seq.WaitUntil(RequestDeadline(ctx))) {
    seq.Cancel();
    throw RequestTimedOut(ctx);
  }
  return seq.Wait();
}

std::shared_ptr<void> InFlight(ServerContext& ctx) {
  ctx.in_flight.fetch_add(1);
  return std::shared_ptr<void>(nullptr, [&ctx](void*) { ctx.in_flight.fetch_sub(1); });
}

namespace {

constexpr size_t kTrimAfterBodyBytes = 8 << 20;

// A route's handler with what every route needs: 503 while loading or
// draining, typed errors mapped to their status, metrics, and the in-flight
// count used for draining.
void RunGuarded(ServerContext& ctx, const Routes::Route& route, const http::Request& req,
                http::Response& res) {
  const auto t0 = std::chrono::steady_clock::now();
  {
    auto held = InFlight(ctx);
    try {
      if (ctx.draining) throw Error(ErrorKind::kUnavailable, "the server is shutting down");
      if (route.needs_model && !ctx.ready) {
        throw Error(ErrorKind::kUnavailable, "the model is loading");
      }
      route.fn(req, res);
    } catch (const Error& e) {
      res = http::Response();
      http::SendError(res, e);
    } catch (const std::exception& e) {
      // Every expected failure is a typed Error; anything else is a bug worth a log line.
      spdlog::error("{} {}: unexpected error: {}", req.method, req.path, e.what());
      res = http::Response();
      http::SendError(res, Error(ErrorKind::kInternal, std::string("internal error: ") + e.what()));
    }
  }
  ctx.metrics.RecordRequest(
      route.metric, res.status,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// Every request: the API key (never asked of /health, so load balancers need
// no secret), then its route, or 404/405.
void Dispatch(ServerContext& ctx, const Routes& routes, const http::Request& req,
              http::Response& res) {
  const std::string& key = ctx.options.api_key;
  if (!key.empty() && req.path != "/health" && !Authorized(req, key)) {
    http::SendError(res, Error(ErrorKind::kUnauthorized,
                               "missing or wrong API key (Authorization: Bearer KEY)"));
    ctx.metrics.RecordRequest("unauthorized", res.status, 0);
    return;
  }
  bool path_known = false;
  const Routes::Route* route = routes.Find(req.method, req.path, &path_known);
  if (route == nullptr) {
    http::SendError(res, path_known ? Error(ErrorKind::kMethodNotAllowed, "method " + req.method +
                                                                              " is not allowed on " +
                                                                              req.path)
                                    : NotFound("no route " + req.method + " " + req.path));
    ctx.metrics.RecordRequest(path_known ? req.path : "other", res.status, 0);
    return;
  }
  if (route->guarded) {
    RunGuarded(ctx, *route, req, res);
  } else {
    route->fn(req, res);
  }
  // A large body's parse tree (JSON nodes take many times the text's bytes)
  // and a large answer are freed by now: hand that memory back rather than
  // keep the process at this request's peak.
  if (req.body.size() + res.body.size() > kTrimAfterBodyBytes) ReleaseFreedMemory();
}

http::HttpLimits LimitsFor(const ServerOptions& o) {
  http::HttpLimits l;
  l.max_body_bytes = o.max_body_bytes;
  l.max_connections = o.max_connections;
  l.worker_threads = o.http_threads > 0 ? o.http_threads : o.max_concurrent_requests + 8;
  auto ms = [](double seconds) {
    return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  };
  l.header_timeout = ms(o.header_timeout);
  l.body_timeout = ms(o.body_timeout);
  l.idle_timeout = ms(o.idle_timeout);
  l.write_timeout = ms(o.write_timeout);
  return l;
}

// New requests get 503 from now on; running jobs have the grace period to
// finish, and responses being written the rest of it.
void Drain(ServerContext& ctx, double grace_seconds) {
  ctx.draining = true;
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000));
  const auto deadline = std::chrono::steady_clock::now() + grace;
  if (ctx.scheduler) {
    ctx.scheduler->Drain();
    if (!ctx.scheduler->WaitIdle(grace)) spdlog::warn("grace period over: cancelling the rest");
  }
  while (ctx.in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

std::pair<int, std::string> ProbeHealth(const std::string& host, int port,
                                        double timeout_seconds) {
  return http::Get(host, port, "/health",
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000)));
}

int RunServer(const ServerOptions& options) {
  // Signals are taken by one thread with sigwait, so no handler runs in an
  // arbitrary thread; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServerContext ctx;
  ctx.options = options;
  ctx.model_id = options.model_name;
  Routes routes;
  AddEmbedRoutes(routes, ctx);
  AddGenerateRoutes(routes, ctx);
  AddInfoRoutes(routes, ctx);
  AddCollectionRoutes(routes, ctx);
  http::HttpCallbacks callbacks;
  callbacks.handle = [&ctx, &routes](const http::Request& req, http::Response& res) {
    Dispatch(ctx, routes, req, res);
  };
  // GET routes only read counters and state: they answer on the I/O threads,
  // so /health answers even when every worker waits on the model.
  callbacks.runs_inline = [](const http::Request& req) { return req.method == "GET"; };
  callbacks.error = [&ctx](const Error& e, http::Response& res) {
    http::SendError(res, e);
    ctx.metrics.RecordRequest("other", res.status, 0);
  };
  http::HttpServer server(LimitsFor(options), std::move(callbacks));
  ctx.http = &server;

  std::string bind_error;
  const int port = server.Bind(options.host, options.port, &bind_error);
  if (port < 0) {
    spdlog::error("cannot listen on {}:{}: {}", options.host, options.port, bind_error);
    return 1;
  }
  server.Start();
  spdlog::info("listening on http://{}:{} (health: 503 until the model is loaded)", options.host,
               port);

  int exit_code = 0;
  std::thread loader([&] {
    try {
      LoadModel(ctx);
      spdlog::info("ready: model '{}' on http://{}:{}", ctx.model_id, options.host, port);
    } catch (const std::exception& e) {
      spdlog::error("failed to load the model: {}", e.what());
      exit_code = 1;
      kill(getpid(), SIGTERM);  // wakes the signal thread below to shut down
    }
  });

  int sig = 0;
  sigwait(&signals, &sig);
  loader.join();
  spdlog::info("signal {}: draining (new requests get 503, grace {} s)", sig,
               options.grace_seconds);
  Drain(ctx, options.grace_seconds);
  // Stopping the scheduler fails what is left, so no handler waits on it
  // while the HTTP server joins its workers.
  if (ctx.scheduler) ctx.scheduler->Stop();
  server.Stop();
  spdlog::info("stopped");
  return exit_code;
}

}  // namespace gritserve
