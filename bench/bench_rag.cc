// RAG time to first token with and without cached documents, in one run, on a
// checkpoint of the exact Qwen2.5-0.5B shape: 5 documents of 256 tokens and a
// 32-token question. Also the stored bytes per token in float32 and float16.
// Prints JSON; not a test.
//   bench_rag [--model DIR | --checkpoint-dtype bf16|f32] [--docs 5] [--doc-tokens 256]
//             [--question-tokens 32] [--profile-cached N]  (only the cached request, N times: for
//             perf record)
//             [--trace FILE]  (with --profile-cached: Chrome trace of the LibTorch ops)
//             [--device cpu|cuda[:N]] [--dtype D]
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "gritserve/common/allocator.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine.h"

using namespace gritserve;
using bench::RandomIds;

int main(int argc, char** argv) {
  CLI::App app{"gritserve RAG time-to-first-token benchmark"};
  std::string device = "cpu", compute_dtype = "auto";
  int docs = 5, doc_tokens = 256, question_tokens = 32, repeats = 3, threads = 0;
  bench::ModelOptions model_options;
  model_options.Add(app);
  app.add_option("--docs", docs);
  app.add_option("--doc-tokens", doc_tokens);
  app.add_option("--question-tokens", question_tokens);
  app.add_option("--repeats", repeats);
  app.add_option("--threads", threads);
  int profile_cached = 0;
  app.add_option("--profile-cached", profile_cached,
                 "run only the cached request this many times and print its mean TTFT");
  std::string trace;
  app.add_option("--trace", trace,
                 "with --profile-cached: write a Chrome trace of those requests' LibTorch ops");
  app.add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", compute_dtype, "auto, float32, bfloat16, float16")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  ConfigureAllocatorForInference();
  spdlog::set_level(spdlog::level::warn);
  const std::string model = model_options.ModelDir();
  nlohmann::json out;
  out["model"] = model;
  out["docs"] = docs;
  out["doc_tokens"] = doc_tokens;
  out["question_tokens"] = question_tokens;
  for (const std::string dtype : {"float32", "float16"}) {
    EngineOptions eo;
    eo.model_dir = model;
    eo.threads = threads;
    eo.device = device;
    eo.dtype = compute_dtype;
    eo.cache_dtype = dtype;
    auto engine = Engine::Load(eo);
    out["device"] = engine->device_name();
    out["dtype"] = engine->dtype_name();
    const int64_t vocab = engine->tokenizer().VocabSize();
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
    auto resolved = engine->ResolveDocuments(refs, KvSource::kCausal);
    SamplingParams p;
    p.max_tokens = 1;
    p.temperature = 0;
    p.ignore_eos = true;
    // Fills the store (the documents' K/V computed once).
    GenerateResult first = engine->Generate(question, p, nullptr, resolved);
    const DocKvStats stats = engine->document_stats();
    out[dtype]["stored_bytes_per_token"] =
        static_cast<double>(stats.bytes) / (static_cast<double>(docs) * doc_tokens);
    if (dtype != "float32") continue;  // timings once, on float32 storage
    if (profile_cached > 0) {
      double total = 0;
      std::unique_ptr<torch::autograd::profiler::RecordProfile> recording;
      if (!trace.empty()) {
        recording = std::make_unique<torch::autograd::profiler::RecordProfile>(trace);
      }
      for (int r = 0; r < profile_cached; ++r) {
        total += engine->Generate(question, p, nullptr, resolved).ttft_ms;
      }
      recording.reset();  // writes the trace
      out["profile_cached_mean_ttft_s"] = total / profile_cached / 1000.0;
      break;
    }
    double cached = 1e30, uncached = 1e30, documents = 0;
    for (int r = 0; r < repeats; ++r) {
      // Interleaved so that both see the same machine state.
      GenerateResult c = engine->Generate(question, p, nullptr, resolved);
      if (c.ttft_ms < cached) documents = c.documents_ms;
      cached = std::min(cached, c.ttft_ms);
      uncached = std::min(uncached, engine->Generate(all, p).ttft_ms);
    }
    out["first_request_with_store_fill_ttft_s"] = first.ttft_ms / 1000.0;
    out["cached_ttft_s"] = cached / 1000.0;
    out["cached_documents_s"] = documents / 1000.0;
    out["uncached_ttft_s"] = uncached / 1000.0;
    out["speedup"] = uncached / cached;
  }
  out["peak_resident_bytes"] = bench::PeakResidentBytes();
  std::cout << out.dump(2) << "\n";
  return 0;
}
