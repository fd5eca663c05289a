// /health, /info, /v1/models, /metrics and /openapi.json.
#include "http_util.h"
#include "openapi.h"
#include "server_context.h"

namespace gritserve {
namespace {

using http::json;

// Not Guarded: /health answers while loading and draining, with 503.
void HandleHealth(const ServerContext& ctx, httplib::Response& res) {
  if (ctx.draining) {
    http::SendError(res, Error(ErrorKind::kUnavailable, "shutting down"));
  } else if (!ctx.ready) {
    http::SendError(res, Error(ErrorKind::kUnavailable, "loading the model"));
  } else {
    http::SendJson(res, {{"status", "ok"}});
  }
}

void HandleInfo(const ServerContext& ctx, httplib::Response& res) {
  const ModelConfig& c = ctx.front().config();
  const ServerOptions& o = ctx.options;
  http::SendJson(res, {{"model_id", ctx.model_id},
                       {"model_dir", o.engine.model_dir},
                       {"architecture", c.architecture_name},
                       {"parameters", c.NumParameters()},
                       {"hidden_size", c.hidden_size},
                       {"num_hidden_layers", c.num_hidden_layers},
                       {"vocab_size", c.vocab_size},
                       {"max_context", ctx.front().max_context()},
                       {"device", ctx.front().device_name()},
                       {"dtype", ctx.front().dtype_name()},
                       {"weights", o.engine.weights},
                       {"tokenizer", ctx.front().tokenizer().Kind()},
                       {"template", ctx.front().prompt_template().name},
                       {"limits",
                        {{"max_body_bytes", o.max_body_bytes},
                         {"max_inputs", o.max_inputs},
                         {"max_input_tokens", ctx.max_input_tokens()},
                         {"max_tokens", o.max_tokens},
                         {"max_concurrent_requests", o.max_concurrent_requests},
                         {"max_batch_tokens", o.engine.max_batch_tokens}}},
                       {"version", "0.1.0"}});
}

void HandleModels(const ServerContext& ctx, httplib::Response& res) {
  http::SendJson(
      res,
      {{"object", "list"},
       {"data",
        {{{"id", ctx.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "gritserve"}}}}});
}

void HandleMetrics(const ServerContext& ctx, httplib::Response& res) {
  SchedulerStats s = ctx.scheduler->stats();
  DocKvStats c = ctx.front().document_stats();
  const double avg_batch =
      s.embed_batches > 0 ? static_cast<double>(s.embed_batch_inputs) / s.embed_batches : 0.0;
  const double avg_round = s.generation_rounds > 0
                               ? static_cast<double>(s.generation_round_sequences) /
                                     static_cast<double>(s.generation_rounds)
                               : 0.0;
  res.set_content(
      ctx.metrics.Render(
          {{"gritserve_queue_size", static_cast<double>(s.queued)},
           {"gritserve_active_generations", static_cast<double>(s.active_generations)},
           {"gritserve_in_flight_requests", static_cast<double>(ctx.in_flight.load())},
           {"gritserve_embed_batch_size_mean", avg_batch},
           {"gritserve_generation_round_size_mean", avg_round},
           {"gritserve_doc_cache_entries", static_cast<double>(c.entries)},
           {"gritserve_doc_cache_bytes", static_cast<double>(c.bytes)},
           {"gritserve_doc_cache_budget_bytes", static_cast<double>(c.budget)}},
          {{"gritserve_prompt_tokens_total", static_cast<double>(s.prompt_tokens)},
           {"gritserve_generated_tokens_total", static_cast<double>(s.generated_tokens)},
           {"gritserve_embed_batches_total", static_cast<double>(s.embed_batches)},
           {"gritserve_embed_batch_inputs_total", static_cast<double>(s.embed_batch_inputs)},
           {"gritserve_generation_rounds_total", static_cast<double>(s.generation_rounds)},
           {"gritserve_generation_round_sequences_total",
            static_cast<double>(s.generation_round_sequences)},
           {"gritserve_doc_cache_hits_total", static_cast<double>(c.hits)},
           {"gritserve_doc_cache_misses_total", static_cast<double>(c.misses)},
           {"gritserve_doc_cache_computed_total", static_cast<double>(c.computed)},
           {"gritserve_doc_cache_evictions_total", static_cast<double>(c.evictions)},
           {"gritserve_doc_cache_disk_reads_total", static_cast<double>(c.disk_reads)},
           {"gritserve_doc_cache_disk_writes_total", static_cast<double>(c.disk_writes)},
           {"gritserve_doc_cache_disk_errors_total", static_cast<double>(c.disk_errors)}}),
      "text/plain; version=0.0.4");
}

void HandleCacheStats(const ServerContext& ctx, httplib::Response& res) {
  DocKvStats s = ctx.front().document_stats();
  http::SendJson(res, {{"entries", s.entries},
                       {"bytes", s.bytes},
                       {"budget_bytes", s.budget},
                       {"ids", s.aliases},
                       {"hits", s.hits},
                       {"misses", s.misses},
                       {"computed", s.computed},
                       {"evictions", s.evictions},
                       {"disk_reads", s.disk_reads},
                       {"disk_writes", s.disk_writes},
                       {"disk_errors", s.disk_errors},
                       {"dir", ctx.options.engine.cache_dir},
                       {"dtype", ctx.options.engine.cache_dtype}});
}

void HandleDeleteCacheEntry(ServerContext& ctx, const httplib::Request& req,
                            httplib::Response& res) {
  const std::string id = req.matches[1];
  // The store is also used by the inference thread; removal is thread-safe.
  if (!ctx.front().RemoveDocument(id)) throw NotFound("unknown document id '" + id + "'");
  http::SendJson(res, {{"id", id}, {"deleted", true}});
}

}  // namespace

void AddInfoRoutes(httplib::Server& server, ServerContext& ctx) {
  server.Get("/health",
             [&ctx](const httplib::Request&, httplib::Response& res) { HandleHealth(ctx, res); });
  server.Get("/info",
             Guarded(ctx, "/info", [&ctx](const auto&, auto& res) { HandleInfo(ctx, res); }));
  server.Get("/v1/models", Guarded(ctx, "/v1/models",
                                   [&ctx](const auto&, auto& res) { HandleModels(ctx, res); }));
  server.Get("/metrics",
             Guarded(ctx, "/metrics", [&ctx](const auto&, auto& res) { HandleMetrics(ctx, res); }));
  server.Get("/cache", Guarded(ctx, "/cache",
                               [&ctx](const auto&, auto& res) { HandleCacheStats(ctx, res); }));
  server.Delete(R"(/cache/(.+))", Guarded(ctx, "/cache/{id}", [&ctx](const auto& req, auto& res) {
                  HandleDeleteCacheEntry(ctx, req, res);
                }));
  server.Get("/openapi.json", [](const httplib::Request&, httplib::Response& res) {
    http::SendJson(res, OpenApiSpec());
  });
}

}  // namespace gritserve
