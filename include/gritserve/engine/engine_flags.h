// The engine's command-line flags, declared once for the server, the CLI's
// model subcommands and the benchmarks, so that each flag has one spelling,
// one default and one help text.
#pragma once

#include <string>

#include "gritserve/engine/types.h"

namespace CLI {
class App;
}

namespace gritserve {

enum class ModelFlag {
  kRequired,  // --model must be given
  kOptional,  // the caller supplies a model when --model is absent
};

// --model, --template, --threads, --device, --dtype, --weights, --max-batch-tokens,
// --max-job-bytes, --cache-bytes, --cache-dir, --cache-disk-bytes, --cache-dtype,
// --cache-redis, --cache-redis-prefix, --cache-redis-timeout-ms, filling
// `options` when parsed.
// `model_help` describes --model (what happens without it).
void AddEngineFlags(CLI::App& app, EngineOptions& options, ModelFlag model,
                    const std::string& model_help);

}  // namespace gritserve
