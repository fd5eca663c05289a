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
#include <set>
#include <thread>

#include "gritserve/engine/checkpoint.h"
#include "http_util.h"
#include "server_context.h"

namespace gritserve {
namespace {

// Every route, for telling 405 (known path, other method) from 404.
const std::set<std::string> kGetRoutes = {"/health",  "/info",         "/v1/models",
                                          "/metrics", "/openapi.json", "/cache"};
const std::set<std::string> kPostRoutes = {
    "/embed",          "/v1/embeddings",       "/rerank",   "/v1/rerank", "/generate",
    "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"};

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

Error BodyTooLarge(int64_t limit) {
  return Error(ErrorKind::kTooLarge,
               "request body larger than " + std::to_string(limit) + " bytes");
}

bool Authorized(const httplib::Request& req, const std::string& key) {
  const std::string auth = req.get_header_value("Authorization");
  if (auth == "Bearer " + key) return true;
  return req.get_header_value("x-api-key") == key;
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
  ctx.ready = true;
}

}  // namespace

httplib::Server::Handler Guarded(
    ServerContext& ctx, const std::string& route,
    std::function<void(const httplib::Request&, httplib::Response&)> fn, bool needs_model) {
  return [&ctx, route, fn, needs_model](const httplib::Request& req, httplib::Response& res) {
    const auto t0 = std::chrono::steady_clock::now();
    ctx.in_flight.fetch_add(1);
    try {
      if (ctx.draining) throw Error(ErrorKind::kUnavailable, "the server is shutting down");
      if (needs_model && !ctx.ready) throw Error(ErrorKind::kUnavailable, "the model is loading");
      // httplib 0.11 enforces its payload limit only on Content-Length bodies; a
      // chunked body of any size reaches the handler, so check it again here.
      if (static_cast<int64_t>(req.body.size()) > ctx.options.max_body_bytes) {
        throw BodyTooLarge(ctx.options.max_body_bytes);
      }
      fn(req, res);
      // A handler that only set content leaves the status to httplib, which
      // fills in 200 after it returns: too late for the count below.
      if (res.status == -1) res.status = 200;
    } catch (const Error& e) {
      http::SendError(res, e);
    } catch (const std::exception& e) {
      // Every expected failure is a typed Error; anything else is a bug worth a log line.
      spdlog::error("{} {}: unexpected error: {}", req.method, req.path, e.what());
      http::SendError(res, Error(ErrorKind::kInternal, std::string("internal error: ") + e.what()));
    }
    ctx.in_flight.fetch_sub(1);
    ctx.metrics.RecordRequest(
        route, res.status,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
}

httplib::Server::HandlerWithContentReader GuardedBody(
    ServerContext& ctx, const std::string& route,
    std::function<void(const httplib::Request&, httplib::Response&)> fn) {
  httplib::Server::Handler guarded = Guarded(ctx, route, std::move(fn));
  return [&ctx, route, guarded](const httplib::Request& req, httplib::Response& res,
                                const httplib::ContentReader& reader) {
    const size_t limit = static_cast<size_t>(ctx.options.max_body_bytes);
    // Past the limit the body is read and dropped, up to this much more, so an
    // ordinary client still gets its 413 rather than a reset connection; a
    // body beyond even that is cut off.
    const size_t drain_limit = std::max<size_t>(limit, 64 << 20);
    std::string body;
    size_t dropped = 0;
    bool too_large = false, cut_off = false;
    const bool read = reader([&](const char* data, size_t len) {
      if (!too_large && body.size() + len <= limit) {
        body.append(data, len);
        return true;
      }
      if (!too_large) {
        too_large = true;
        std::string().swap(body);
      }
      dropped += len;
      cut_off = dropped > drain_limit;
      return !cut_off;
    });
    if (!read && !too_large) {
      // httplib refuses a declared Content-Length over the limit without
      // calling the receiver; any other failure is a broken body.
      const std::string declared = req.get_header_value("Content-Length");
      if (declared.empty() || std::strtoull(declared.c_str(), nullptr, 10) <= limit) {
        http::SendError(res, InvalidRequest("could not read the request body"));
        res.set_header("Connection", "close");
        ctx.metrics.RecordRequest(route, res.status, 0);
        return;
      }
      too_large = cut_off = true;
    }
    if (too_large) {
      http::SendError(res, BodyTooLarge(ctx.options.max_body_bytes));
      // The unread rest of the body would be taken for the next request.
      if (cut_off) res.set_header("Connection", "close");
      ctx.metrics.RecordRequest(route, res.status, 0);
      return;
    }
    // httplib owns a mutable Request and hands content-reader routes an empty
    // body; filling it lets every route read req.body as before.
    const_cast<httplib::Request&>(req).body = std::move(body);
    guarded(req, res);
  };
}

namespace {

// Before any route: the API key (never asked of /health, so load balancers need
// no secret).
httplib::Server::HandlerResponse CheckApiKey(ServerContext& ctx, const std::string& api_key,
                                             const httplib::Request& req, httplib::Response& res) {
  if (api_key.empty() || req.path == "/health" || Authorized(req, api_key)) {
    return httplib::Server::HandlerResponse::Unhandled;
  }
  http::SendError(
      res, Error(ErrorKind::kUnauthorized, "missing or wrong API key (Authorization: Bearer KEY)"));
  ctx.metrics.RecordRequest("unauthorized", res.status, 0);
  return httplib::Server::HandlerResponse::Handled;
}

// Errors that httplib produces itself (unknown route, body too large, bad
// request line) get the same JSON shape as ours. httplib answers an unknown
// method on a known path with its not-found status; that is our 405.
httplib::Server::HandlerResponse RewriteHttplibError(ServerContext& ctx, int64_t max_body_bytes,
                                                     const httplib::Request& req,
                                                     httplib::Response& res) {
  if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
  // /cache/{id} answers DELETE only.
  const bool known = kGetRoutes.count(req.path) || kPostRoutes.count(req.path) ||
                     req.path.rfind("/cache/", 0) == 0;
  if (res.status == http::StatusFor(ErrorKind::kNotFound)) {
    http::SendError(res, known ? Error(ErrorKind::kMethodNotAllowed,
                                       "method " + req.method + " is not allowed on " + req.path)
                               : NotFound("no route " + req.method + " " + req.path));
  } else if (res.status == http::StatusFor(ErrorKind::kTooLarge)) {
    http::SendError(res, BodyTooLarge(max_body_bytes));
  } else {
    http::SendHttplibError(res);
  }
  ctx.metrics.RecordRequest(known ? req.path : "other", res.status, 0);
  return httplib::Server::HandlerResponse::Handled;
}

void ConfigureServer(httplib::Server& server, ServerContext& ctx, const ServerOptions& options) {
  const size_t http_threads = static_cast<size_t>(
      options.http_threads > 0 ? options.http_threads : options.max_concurrent_requests + 8);
  server.new_task_queue = [http_threads] { return new httplib::ThreadPool(http_threads); };
  server.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  server.set_read_timeout(60, 0);
  server.set_write_timeout(60, 0);

  server.set_pre_routing_handler(
      [&ctx, api_key = options.api_key](const httplib::Request& req, httplib::Response& res) {
        return CheckApiKey(ctx, api_key, req, res);
      });
  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [&ctx, max_body_bytes = options.max_body_bytes](const httplib::Request& req,
                                                      httplib::Response& res) {
        return RewriteHttplibError(ctx, max_body_bytes, req, res);
      }));
  server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    spdlog::debug("{} {} -> {}", req.method, req.path, res.status);
  });

  AddEmbedRoutes(server, ctx);
  AddGenerateRoutes(server, ctx);
  AddInfoRoutes(server, ctx);
}

// Port 0 takes any free port: callers that start several servers at once
// (tests) need no free-port guess to race on. -1 when the bind failed.
int Bind(httplib::Server& server, const ServerOptions& options) {
  if (options.port == 0) return server.bind_to_any_port(options.host);
  return server.bind_to_port(options.host, options.port) ? options.port : -1;
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
  httplib::Server server;
  ConfigureServer(server, ctx, options);

  const int port = Bind(server, options);
  if (port < 0) {
    spdlog::error("cannot listen on {}:{}", options.host, options.port);
    return 1;
  }
  std::thread http_thread([&] { server.listen_after_bind(); });
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
  server.stop();
  http_thread.join();
  if (ctx.scheduler) ctx.scheduler->Stop();
  spdlog::info("stopped");
  return exit_code;
}

}  // namespace gritserve
