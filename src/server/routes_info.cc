// /health, /info, /v1/models, /metrics and /openapi.json.
#include "collections_api.h"
#include "gritserve/cache/redis_tier.h"
#include "http_util.h"
#include "openapi.h"
#include "server_context.h"

namespace gritserve {
namespace {

using http::json;
using Series = std::vector<std::pair<std::string, double>>;

// The state of each document store tier there is: "ok", or "degraded" while
// it cannot be used (requests are then served by the others or recomputed).
json CacheTiers(const ServerContext& ctx) {
  const DocKvStats s = ctx.front().document_stats();
  json tiers = {{"memory", "ok"}};
  if (!ctx.options.engine.cache_dir.empty()) {
    tiers["disk"] = s.disk_failing ? "degraded" : "ok";
  }
  if (s.redis_enabled) tiers["redis"] = s.redis.up ? "ok" : "degraded";
  return tiers;
}

// Per tier, labelled for routers that score replicas by what they hold.
Series TierCounters(const DocKvStats& c) {
  auto tier = [](const char* name, const char* t) {
    return std::string(name) + "{tier=\"" + t + "\"}";
  };
  const char* hits = "gritserve_doc_cache_tier_hits_total";
  const char* misses = "gritserve_doc_cache_tier_misses_total";
  const char* read = "gritserve_doc_cache_tier_read_bytes_total";
  const RedisTierStats& r = c.redis;
  return {{tier(hits, "memory"), static_cast<double>(c.memory_hits)},
          {tier(hits, "disk"), static_cast<double>(c.disk_reads)},
          {tier(hits, "redis"), static_cast<double>(r.hits)},
          {tier(misses, "memory"), static_cast<double>(c.memory_misses)},
          {tier(misses, "disk"), static_cast<double>(c.disk_misses)},
          {tier(misses, "redis"), static_cast<double>(r.misses)},
          {tier(read, "disk"), static_cast<double>(c.disk_read_bytes)},
          {tier(read, "redis"), static_cast<double>(r.read_bytes)},
          {"gritserve_doc_cache_redis_id_hits_total", static_cast<double>(r.id_hits)},
          {"gritserve_doc_cache_redis_id_misses_total", static_cast<double>(r.id_misses)},
          {"gritserve_doc_cache_redis_writes_total", static_cast<double>(r.writes)},
          {"gritserve_doc_cache_redis_written_bytes_total", static_cast<double>(r.written_bytes)},
          {"gritserve_doc_cache_redis_write_drops_total", static_cast<double>(r.write_drops)},
          {"gritserve_doc_cache_redis_errors_total", static_cast<double>(r.errors)},
          {"gritserve_doc_cache_redis_outages_total", static_cast<double>(r.outages)},
          {"gritserve_doc_cache_redis_corrupt_total", static_cast<double>(r.corrupt)}};
}

json TierStats(const ServerContext& ctx, const DocKvStats& s) {
  const json state = CacheTiers(ctx);
  json tiers = {{"memory",
                 {{"state", state["memory"]},
                  {"hits", s.memory_hits},
                  {"misses", s.memory_misses},
                  {"bytes", s.bytes}}}};
  if (state.contains("disk")) {
    tiers["disk"] = {{"state", state["disk"]},
                     {"hits", s.disk_reads},
                     {"misses", s.disk_misses},
                     {"bytes", s.disk_bytes},
                     {"read_bytes", s.disk_read_bytes}};
  }
  if (state.contains("redis")) {
    const RedisTierStats& r = s.redis;
    const std::string& url = ctx.options.engine.cache_redis;
    tiers["redis"] = {{"state", state["redis"]},
                      {"url", ParseRedisUrl(url).Display()},
                      {"prefix", ctx.options.engine.cache_redis_prefix},
                      {"hits", r.hits},
                      {"misses", r.misses},
                      {"id_hits", r.id_hits},
                      {"id_misses", r.id_misses},
                      {"read_bytes", r.read_bytes},
                      {"writes", r.writes},
                      {"written_bytes", r.written_bytes},
                      {"write_drops", r.write_drops},
                      {"errors", r.errors},
                      {"outages", r.outages},
                      {"corrupt", r.corrupt}};
  }
  return tiers;
}

std::string FetchHistograms(const DocKvStats& c) {
  const char* name = "gritserve_doc_cache_fetch_seconds";
  const std::vector<double> bounds(FetchLatency::kBounds.begin(), FetchLatency::kBounds.end());
  auto one = [&](const FetchLatency& h, const char* tier, bool first) {
    return Metrics::RenderHistogram(name, std::string("tier=\"") + tier + "\"", bounds,
                                    std::vector<int64_t>(h.buckets.begin(), h.buckets.end()), h.sum,
                                    h.count, first);
  };
  return "# HELP gritserve_doc_cache_fetch_seconds Document entry fetches from a tier below "
         "memory (redis: one pipelined round trip per request).\n" +
         one(c.disk_latency, "disk", true) + one(c.redis.latency, "redis", false);
}

// Not Guarded: /health answers while loading and draining, with 503.
void HandleHealth(const ServerContext& ctx, http::Response& res) {
  if (ctx.draining) {
    http::SendError(res, Error(ErrorKind::kUnavailable, "shutting down"));
  } else if (!ctx.ready) {
    http::SendError(res, Error(ErrorKind::kUnavailable, "loading the model"));
  } else {
    http::SendJson(res, {{"status", "ok"}});
  }
}

void HandleInfo(const ServerContext& ctx, http::Response& res) {
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
                       {"dtype_requested", o.engine.dtype},
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
                       {"collections", CollectionInfo(ctx)},
                       {"cache_tiers", CacheTiers(ctx)},
                       {"version", "0.1.0"}});
}

void HandleModels(const ServerContext& ctx, http::Response& res) {
  http::SendJson(
      res,
      {{"object", "list"},
       {"data",
        {{{"id", ctx.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "gritserve"}}}}});
}

void HandleMetrics(const ServerContext& ctx, http::Response& res) {
  SchedulerStats s = ctx.scheduler->stats();
  DocKvStats c = ctx.front().document_stats();
  const double avg_batch =
      s.embed_batches > 0 ? static_cast<double>(s.embed_batch_inputs) / s.embed_batches : 0.0;
  const double avg_round = s.generation_rounds > 0
                               ? static_cast<double>(s.generation_round_sequences) /
                                     static_cast<double>(s.generation_rounds)
                               : 0.0;
  Series counters = {
      {"gritserve_prompt_tokens_total", static_cast<double>(s.prompt_tokens)},
      {"gritserve_generated_tokens_total", static_cast<double>(s.generated_tokens)},
      {"gritserve_embed_batches_total", static_cast<double>(s.embed_batches)},
      {"gritserve_embed_batch_inputs_total", static_cast<double>(s.embed_batch_inputs)},
      {"gritserve_generation_rounds_total", static_cast<double>(s.generation_rounds)},
      {"gritserve_generation_round_sequences_total",
       static_cast<double>(s.generation_round_sequences)},
      {"gritserve_expired_jobs_total", static_cast<double>(s.expired_jobs)},
      {"gritserve_doc_cache_hits_total", static_cast<double>(c.hits)},
      {"gritserve_doc_cache_misses_total", static_cast<double>(c.misses)},
      {"gritserve_doc_cache_computed_total", static_cast<double>(c.computed)},
      {"gritserve_doc_cache_evictions_total", static_cast<double>(c.evictions)},
      {"gritserve_doc_cache_disk_reads_total", static_cast<double>(c.disk_reads)},
      {"gritserve_doc_cache_disk_writes_total", static_cast<double>(c.disk_writes)},
      {"gritserve_doc_cache_disk_errors_total", static_cast<double>(c.disk_errors)},
      {"gritserve_doc_cache_disk_write_errors_total", static_cast<double>(c.disk_write_errors)},
      {"gritserve_doc_cache_disk_evictions_total", static_cast<double>(c.disk_evictions)},
      {"gritserve_doc_cache_id_evictions_total", static_cast<double>(c.alias_evictions)}};
  const Series tiers = TierCounters(c);
  counters.insert(counters.end(), tiers.begin(), tiers.end());
  res.content_type = "text/plain; version=0.0.4";
  res.body = ctx.metrics.Render(
      {{"gritserve_queue_size", static_cast<double>(s.queued)},
       {"gritserve_active_generations", static_cast<double>(s.active_generations)},
       {"gritserve_in_flight_requests", static_cast<double>(ctx.in_flight.load())},
       {"gritserve_open_connections",
        static_cast<double>(ctx.http ? ctx.http->open_connections() : 0)},
       {"gritserve_embed_batch_size_mean", avg_batch},
       {"gritserve_generation_round_size_mean", avg_round},
       {"gritserve_doc_cache_entries", static_cast<double>(c.entries)},
       {"gritserve_doc_cache_bytes", static_cast<double>(c.bytes)},
       {"gritserve_doc_cache_budget_bytes", static_cast<double>(c.budget)},
       {"gritserve_doc_cache_ids", static_cast<double>(c.aliases)},
       {"gritserve_doc_cache_disk_files", static_cast<double>(c.disk_files)},
       {"gritserve_doc_cache_disk_bytes", static_cast<double>(c.disk_bytes)},
       {"gritserve_doc_cache_disk_budget_bytes", static_cast<double>(c.disk_budget)},
       {"gritserve_doc_cache_tier_bytes{tier=\"memory\"}", static_cast<double>(c.bytes)},
       {"gritserve_doc_cache_tier_bytes{tier=\"disk\"}", static_cast<double>(c.disk_bytes)},
       {"gritserve_doc_cache_redis_up", c.redis.up ? 1.0 : 0.0}},
      counters);
  res.body += FetchHistograms(c);
  res.body += CollectionMetrics(ctx);
}

void HandleCacheStats(const ServerContext& ctx, http::Response& res) {
  DocKvStats s = ctx.front().document_stats();
  http::SendJson(res, {{"entries", s.entries},
                       {"bytes", s.bytes},
                       {"budget_bytes", s.budget},
                       {"ids", s.aliases},
                       {"id_bytes", s.alias_bytes},
                       {"hits", s.hits},
                       {"misses", s.misses},
                       {"computed", s.computed},
                       {"evictions", s.evictions},
                       {"disk_reads", s.disk_reads},
                       {"disk_writes", s.disk_writes},
                       {"disk_errors", s.disk_errors},
                       {"disk_write_errors", s.disk_write_errors},
                       {"disk_files", s.disk_files},
                       {"disk_bytes", s.disk_bytes},
                       {"disk_budget_bytes", s.disk_budget},
                       {"disk_evictions", s.disk_evictions},
                       {"id_evictions", s.alias_evictions},
                       {"dir", ctx.options.engine.cache_dir},
                       {"dtype", ctx.options.engine.cache_dtype},
                       {"tiers", TierStats(ctx, s)}});
}

void HandleDeleteCacheEntry(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const std::string id = req.path.substr(std::string("/cache/").size());
  // The store is also used by the inference thread; removal is thread-safe.
  if (!ctx.front().RemoveDocument(id)) throw NotFound("unknown document id '" + id + "'");
  http::SendJson(res, {{"id", id}, {"deleted", true}});
}

}  // namespace

void AddInfoRoutes(Routes& routes, ServerContext& ctx) {
  auto get = [&](const char* path, std::function<void(http::Response&)> fn, bool guarded = true,
                 bool needs_model = true) {
    routes.Add({"GET", path, path, false, guarded, needs_model,
                [fn](const http::Request&, http::Response& res) { fn(res); }});
  };
  // /health answers while loading and draining, with 503.
  get(
      "/health", [&ctx](http::Response& res) { HandleHealth(ctx, res); }, false);
  get("/info", [&ctx](http::Response& res) { HandleInfo(ctx, res); });
  get("/v1/models", [&ctx](http::Response& res) { HandleModels(ctx, res); });
  get("/metrics", [&ctx](http::Response& res) { HandleMetrics(ctx, res); });
  get("/cache", [&ctx](http::Response& res) { HandleCacheStats(ctx, res); });
  get(
      "/openapi.json", [](http::Response& res) { http::SendJson(res, OpenApiSpec()); }, false,
      false);
  routes.Add({"DELETE", "/cache/", "/cache/{id}", true, true, true,
              [&ctx](const http::Request& req, http::Response& res) {
                HandleDeleteCacheEntry(ctx, req, res);
              }});
}

}  // namespace gritserve
