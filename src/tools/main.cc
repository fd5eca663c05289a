// gritserve: with a subcommand, a command-line tool; without one, the server.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "gritserve/common/allocator.h"
#include "gritserve/common/error.h"
#include "gritserve/engine/engine_flags.h"
#include "gritserve/server/server.h"

namespace {

// Applies a JSON config file whose keys are the flag names (with - or _):
// values fill only the options not given on the command line, so flags win.
void ApplyConfigFile(CLI::App& app, const std::string& path) {
  std::ifstream in(path);
  if (!in) throw gritserve::LoadError("cannot read config file " + path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw gritserve::LoadError("config file " + path + ": " + e.what());
  }
  if (!j.is_object()) throw gritserve::LoadError("config file " + path + " must hold an object");
  for (const auto& [key, value] : j.items()) {
    std::string name = key;
    std::replace(name.begin(), name.end(), '_', '-');
    CLI::Option* opt = app.get_option_no_throw("--" + name);
    if (opt == nullptr || name == "config") {
      throw gritserve::LoadError("config file " + path + ": unknown key '" + key + "'");
    }
    if (opt->count() > 0) continue;
    std::string text = value.is_string() ? value.get<std::string>() : value.dump();
    opt->clear();
    opt->add_result(text);
    opt->run_callback();
  }
}

// Every server flag can also come from the environment as GRITSERVE_<FLAG>
// (--cache-bytes: GRITSERVE_CACHE_BYTES), which is how containers are configured.
// Flags win over the environment, and both over a --config file; an empty
// variable counts as unset.
void AddEnvironmentNames(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    if (opt->get_lnames().empty() || opt->get_lnames()[0] == "help") continue;
    std::string env = "GRITSERVE_" + opt->get_lnames()[0];
    for (char& c : env) c = c == '-' ? '_' : static_cast<char>(std::toupper(c));
    opt->envname(env);
  }
}

}  // namespace

int main(int argc, char** argv) {
  gritserve::ConfigureAllocatorForInference();
  CLI::App app{
      "gritserve: one decoder model for embeddings, reranking and generation.\n"
      "Without a subcommand it runs the HTTP server."};
  app.require_subcommand(0, 1);
  std::function<void()> action;
  gritserve::AddCliSubcommands(app, action);

  gritserve::ServerOptions o;
  std::string config_path, log_level = "info";
  gritserve::AddEngineFlags(app, o.engine, gritserve::ModelFlag::kOptional,
                            "model directory (Hugging Face layout); default: a generated demo "
                            "checkpoint with RANDOM weights");
  app.add_option("--config", config_path, "JSON file with any of these flags as keys");
  app.add_option("--host", o.host, "address to listen on")->capture_default_str();
  app.add_option("--port", o.port, "port (0: any free port, named in the log)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--max-concurrent-requests", o.max_concurrent_requests,
                 "queued + running jobs before 429")
      ->capture_default_str();
  app.add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY' (not on /health)");
  app.add_option("--max-body-bytes", o.max_body_bytes, "request body limit (413 beyond)")
      ->capture_default_str();
  app.add_option("--max-inputs", o.max_inputs, "inputs per request (413 beyond)")
      ->capture_default_str();
  app.add_option("--max-input-tokens", o.max_input_tokens,
                 "tokens per input (422 beyond unless truncated); 0: the model's context");
  app.add_option("--max-tokens", o.max_tokens, "largest max_tokens a request may ask for")
      ->capture_default_str();
  app.add_option("--http-threads", o.http_threads, "HTTP worker threads (0: concurrency + 8)");
  app.add_option("--max-connections", o.max_connections,
                 "open connections at once (503 and close beyond)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--header-timeout", o.header_timeout,
                 "seconds from a request's first byte to the end of its headers (408 beyond)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--body-timeout", o.body_timeout, "seconds for a whole request body (408 beyond)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--idle-timeout", o.idle_timeout,
                 "seconds a kept-alive connection may wait for its next request")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--write-timeout", o.write_timeout,
                 "seconds a client may take to read each response write")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--request-timeout", o.request_timeout,
                 "seconds a request may wait for the model, queue included (503 and its "
                 "generation cancelled beyond); 0: no limit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--grace-seconds", o.grace_seconds, "drain time on SIGTERM")
      ->capture_default_str();
  app.add_option("--model-name", o.model_name, "model id reported to clients");
  app.add_option("--data-dir", o.collections.data_dir,
                 "directory where document collections persist (none: memory only)");
  app.add_option("--max-collection-batch", o.max_collection_batch,
                 "documents per request added to a collection (413 beyond)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--max-collection-documents", o.collections.max_documents,
                 "documents (chunks) one collection may hold (413 beyond)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--collection-exact-below", o.collections.index.exact_below,
                 "collections with fewer vectors are searched exactly; larger ones by HNSW")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--hnsw-m", o.collections.index.m, "HNSW graph degree (hnswlib M)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{256}));
  app.add_option("--hnsw-ef-construction", o.collections.index.ef_construction,
                 "HNSW candidates at insertion")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{10000}));
  app.add_option("--hnsw-ef-search", o.collections.index.ef_search,
                 "HNSW candidates per search (at least top_k)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{10000}));
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  AddEnvironmentNames(app);

  // Logs go to stderr so that subcommands' JSON on stdout stays parseable.
  spdlog::set_default_logger(spdlog::stderr_color_mt("gritserve"));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (!config_path.empty()) ApplyConfigFile(app, config_path);
    spdlog::set_level(spdlog::level::from_str(log_level));
    if (action) {
      action();
      return 0;
    }
    return gritserve::RunServer(o);
  } catch (const gritserve::Error& e) {
    std::cerr << nlohmann::json(
                     {{"error",
                       {{"message", e.what()}, {"type", gritserve::ErrorKindName(e.kind())}}}})
                     .dump()
              << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr
        << nlohmann::json({{"error", {{"message", e.what()}, {"type", "internal_error"}}}}).dump()
        << "\n";
    return 1;
  }
}
