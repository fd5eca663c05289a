// RAG time to first token with and without cached documents, in one run, on a
// checkpoint of the exact Qwen2.5-0.5B shape: 5 documents of 256 tokens and a
// 32-token question. Also the stored bytes per token in float32 and float16.
// With --cache-redis URL, also the time to first token with the documents'
// K/V from this process's memory, from that Redis, and computed (bench/rag_redis.sh
// runs it against a redis-server on loopback). Prints JSON; not a test.
//   bench_rag [--model DIR | --checkpoint-dtype bf16|f32] [--docs 5] [--doc-tokens 256]
//             [--question-tokens 32] [--profile-cached N]  (only the cached request, N times: for
//             perf record)
//             [--trace FILE]  (with --profile-cached: Chrome trace of the LibTorch ops)
//             [--device cpu|cuda[:N]] [--dtype D]
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench_util.h"
#include "gritserve/common/allocator.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine.h"

using namespace gritserve;
using bench::RandomIds;

namespace {

// The cached request alone, `times` times, optionally traced.
void Profile(Runner& runner, const std::vector<int32_t>& question, const SamplingParams& p,
             const std::vector<ResolvedDocument>& resolved, int times, const std::string& trace,
             nlohmann::json& out) {
  double total = 0;
  std::unique_ptr<torch::autograd::profiler::RecordProfile> recording;
  if (!trace.empty()) {
    recording = std::make_unique<torch::autograd::profiler::RecordProfile>(trace);
  }
  for (int r = 0; r < times; ++r) {
    total += runner.Generate(question, p, nullptr, resolved).ttft_ms;
  }
  recording.reset();  // writes the trace
  out["profile_cached_mean_ttft_s"] = total / times / 1000.0;
}

// The question over the stored documents against the same tokens uncached.
void TimeCachedAgainstUncached(Runner& runner, const std::vector<int32_t>& question,
                               const std::vector<int32_t>& all, const SamplingParams& p,
                               const std::vector<ResolvedDocument>& resolved, int repeats,
                               nlohmann::json& out) {
  double cached = 1e30, uncached = 1e30, documents = 0;
  for (int r = 0; r < repeats; ++r) {
    // Interleaved so that both see the same machine state.
    GenerateResult c = runner.Generate(question, p, nullptr, resolved);
    if (c.ttft_ms < cached) documents = c.documents_ms;
    cached = std::min(cached, c.ttft_ms);
    uncached = std::min(uncached, runner.Generate(all, p).ttft_ms);
  }
  out["cached_ttft_s"] = cached / 1000.0;
  out["cached_documents_s"] = documents / 1000.0;
  out["uncached_ttft_s"] = uncached / 1000.0;
  out["speedup"] = uncached / cached;
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Resolving the documents (which fetches what memory lacks from Redis, on
// the request's thread as the server does) and generating: the first token.
double ResolveAndGenerate(Engine& e, const std::vector<DocumentRef>& refs,
                          const std::vector<int32_t>& question, const SamplingParams& p) {
  const auto t0 = std::chrono::steady_clock::now();
  auto resolved = e.front().ResolveDocuments(refs, KvSource::kCausal);
  const double resolve_ms = MsSince(t0);
  return resolve_ms + e.runner().Generate(question, p, nullptr, resolved).ttft_ms;
}

// Two engines on one Redis, in half precision storage: each round the writer
// computes fresh documents (and stores them), the reader then takes them from
// Redis, then from its own memory.
void TimeTiers(const EngineOptions& base, int docs, int doc_tokens, int question_tokens,
               int repeats, nlohmann::json& out) {
  EngineOptions eo = base;
  eo.cache_dtype = "float16";
  // Keys of this run only: entries an earlier run left must not count as computed.
  eo.cache_redis_prefix +=
      "bench-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count()) + ":";
  auto writer = Engine::Load(eo);
  auto reader = Engine::Load(eo);
  const int64_t vocab = writer->front().tokenizer().VocabSize();
  const std::vector<int32_t> question = RandomIds(question_tokens, vocab, 7);
  SamplingParams p;
  p.max_tokens = 1;
  p.temperature = 0;
  p.ignore_eos = true;
  double computed = 1e30, redis = 1e30, memory = 1e30;
  for (int r = 0; r < repeats; ++r) {
    std::vector<DocumentRef> refs(docs);
    for (int i = 0; i < docs; ++i) refs[i].ids = RandomIds(doc_tokens, vocab, 1000 + r * docs + i);
    const int64_t written = writer->front().document_stats().redis.writes;
    computed = std::min(computed, ResolveAndGenerate(*writer, refs, question, p));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (writer->front().document_stats().redis.writes < written + docs &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    redis = std::min(redis, ResolveAndGenerate(*reader, refs, question, p));
    memory = std::min(memory, ResolveAndGenerate(*reader, refs, question, p));
  }
  const DocKvStats s = reader->front().document_stats();
  out["tiers"] = {
      {"cache_dtype", "float16"},
      {"memory_ttft_s", memory / 1000.0},
      {"redis_ttft_s", redis / 1000.0},
      {"computed_ttft_s", computed / 1000.0},
      {"reader_computed", s.computed},
      {"reader_redis_hits", s.redis.hits},
      {"redis_fetch_mean_s", s.redis.latency.sum / std::max<int64_t>(s.redis.latency.count, 1)}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve RAG time-to-first-token benchmark"};
  int docs = 5, doc_tokens = 256, question_tokens = 32, repeats = 3;
  bench::ModelOptions model_options;
  model_options.Add(app);
  app.add_option("--docs", docs);
  app.add_option("--doc-tokens", doc_tokens);
  app.add_option("--question-tokens", question_tokens);
  app.add_option("--repeats", repeats);
  int profile_cached = 0;
  app.add_option("--profile-cached", profile_cached,
                 "run only the cached request this many times and print its mean TTFT");
  std::string trace;
  app.add_option("--trace", trace,
                 "with --profile-cached: write a Chrome trace of those requests' LibTorch ops");
  CLI11_PARSE(app, argc, argv);
  ConfigureAllocatorForInference();
  spdlog::set_level(spdlog::level::warn);
  const EngineOptions base = model_options.Resolved();
  const std::string model = base.model_dir;
  nlohmann::json out;
  out["model"] = model;
  out["docs"] = docs;
  out["doc_tokens"] = doc_tokens;
  out["question_tokens"] = question_tokens;
  for (const std::string dtype : {"float32", "float16"}) {
    EngineOptions eo = base;
    eo.cache_dtype = dtype;
    eo.cache_redis.clear();  // this process's memory only (TimeTiers below for Redis)
    auto loaded = Engine::Load(eo);
    const FrontEnd& front = loaded->front();
    Runner& runner = loaded->runner();
    out["device"] = front.device_name();
    out["dtype"] = front.dtype_name();
    const int64_t vocab = front.tokenizer().VocabSize();
    std::vector<DocumentRef> refs;
    std::vector<int32_t> all;
    for (int i = 0; i < docs; ++i) {
      DocumentRef r;
      r.ids = RandomIds(doc_tokens, vocab, 100 + i);
      all.insert(all.end(), r.ids.begin(), r.ids.end());
      refs.push_back(std::move(r));
    }
    const std::vector<int32_t> question = RandomIds(question_tokens, vocab, 7);
    all.insert(all.end(), question.begin(), question.end());
    auto resolved = front.ResolveDocuments(refs, KvSource::kCausal);
    SamplingParams p;
    p.max_tokens = 1;
    p.temperature = 0;
    p.ignore_eos = true;
    // Fills the store (the documents' K/V computed once).
    GenerateResult first = runner.Generate(question, p, nullptr, resolved);
    const DocKvStats stats = front.document_stats();
    out[dtype]["stored_bytes_per_token"] =
        static_cast<double>(stats.bytes) / (static_cast<double>(docs) * doc_tokens);
    if (dtype != "float32") continue;  // timings once, on float32 storage
    if (profile_cached > 0) {
      Profile(runner, question, p, resolved, profile_cached, trace, out);
      break;
    }
    TimeCachedAgainstUncached(runner, question, all, p, resolved, repeats, out);
    out["first_request_with_store_fill_ttft_s"] = first.ttft_ms / 1000.0;
  }
  if (!base.cache_redis.empty() && profile_cached == 0) {
    TimeTiers(base, docs, doc_tokens, question_tokens, repeats, out);
  }
  out["peak_resident_bytes"] = bench::PeakResidentBytes();
  std::cout << out.dump(2) << "\n";
  return 0;
}
