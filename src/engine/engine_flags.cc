#include "gritserve/engine/engine_flags.h"

#include <CLI/CLI.hpp>
#include <stdexcept>

#include "gritserve/cache/redis_tier.h"

namespace gritserve {

void AddEngineFlags(CLI::App& app, EngineOptions& o, ModelFlag model,
                    const std::string& model_help) {
  CLI::Option* m = app.add_option("--model", o.model_dir, model_help);
  if (model == ModelFlag::kRequired) m->required();
  app.add_option("--template", o.template_path, "prompt template JSON (see configs/)");
  app.add_option("--threads", o.threads, "compute threads (0: all cores)");
  app.add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", o.dtype, "auto, float32, bfloat16, float16")->capture_default_str();
  app.add_option("--weights", o.weights,
                 "bf16 (as loaded), q8 or q4: linear layers and LM head quantized at load")
      ->check(CLI::IsMember({"bf16", "q8", "q4"}))
      ->capture_default_str();
  app.add_option("--max-batch-tokens", o.max_batch_tokens, "padded tokens per embedding pass")
      ->capture_default_str();
  app.add_option("--max-job-bytes", o.max_job_bytes,
                 "estimated working memory one request may take (0: what is free)")
      ->capture_default_str();
  app.add_option("--cache-bytes", o.cache_bytes, "document KV store budget in bytes")
      ->capture_default_str();
  app.add_option("--cache-dir", o.cache_dir, "document KV disk tier directory");
  app.add_option("--cache-disk-bytes", o.cache_disk_bytes,
                 "disk tier budget in bytes, entry and id files together (LRU eviction past it)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--cache-dtype", o.cache_dtype, "document KV storage: float32, float16, bfloat16")
      ->capture_default_str();
  app.add_option("--cache-redis", o.cache_redis,
                 "Redis tier shared by servers: redis://[[user]:password@]host[:port][/db] "
                 "(entries and ids; eviction is Redis's own maxmemory policy)")
      ->check(
          [](const std::string& url) {
            try {
              ParseRedisUrl(url);
              return std::string();
            } catch (const std::invalid_argument& e) {
              return std::string(e.what());
            }
          },
          "redis://[[user]:password@]host[:port][/db]");
  app.add_option("--cache-redis-prefix", o.cache_redis_prefix, "prefix of the Redis keys")
      ->capture_default_str();
  app.add_option("--cache-redis-timeout-ms", o.cache_redis_timeout_ms,
                 "Redis connect and per-operation timeout; past it the tier is skipped until "
                 "Redis answers again")
      ->check(CLI::Range(1, 60000))
      ->capture_default_str();
}

}  // namespace gritserve
