// Engine throughput on a checkpoint of the exact Qwen2.5-0.5B shape (random
// weights): prefill, embedding and decode tokens/s. Prints JSON; not a test.
//   bench_engine [--model DIR | --checkpoint-dtype bf16|f32] [--threads N] [--repeats N] [--device
//   cpu|cuda[:N]] [--dtype D] [--weights bf16|q8|q4] [--only prefill,embed,decode_1,...]
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "gritserve/common/allocator.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine.h"
#include "gritserve/kernels/cpu_kernels.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/kernels/quant.h"
#include "gritserve/kernels/small_gemm.h"

using namespace gritserve;
using bench::RandomIds;

namespace {
double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Prompts of 128 and 512 tokens: prefill throughput.
void MeasurePrefill(const FrontEnd& front, Runner& runner, int repeats, nlohmann::json& out) {
  const int64_t vocab = front.tokenizer().VocabSize();
  for (int64_t n : {128, 512}) {
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      SamplingParams p;
      p.max_tokens = 1;
      p.temperature = 0;
      p.ignore_eos = true;
      GenerateResult res = runner.Generate(RandomIds(n, vocab, r + 1), p);
      best = std::min(best, res.prefill_ms / 1000.0);
    }
    out["prefill_" + std::to_string(n) + "_tokens_per_s"] = n / best;
  }
}

// Eight 128-token inputs embedded in one call.
void MeasureEmbed(const FrontEnd& front, Runner& runner, int repeats, nlohmann::json& out) {
  const int64_t vocab = front.tokenizer().VocabSize();
  std::vector<EncodedPrompt> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(front.EncodeEmbedIds(RandomIds(128, vocab, i)));
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    runner.Embed(prompts, EmbedOptions{});
    best = std::min(best, Seconds(t0));
  }
  out["embed_8x128_tokens_per_s"] = 8 * 128 / best;
  out["embed_8x128_sequences_per_s"] = 8 / best;
}

// One sequence decoding, greedy or (`sampled`) at temperature 0.7, top_p 0.9.
void MeasureDecodeOne(const FrontEnd& front, Runner& runner, int repeats, bool sampled,
                      nlohmann::json& out) {
  const int64_t vocab = front.tokenizer().VocabSize();
  double best = 0;
  for (int r = 0; r < std::max(1, repeats - 1); ++r) {
    SamplingParams p;
    p.max_tokens = 33;
    p.temperature = sampled ? 0.7 : 0;
    p.top_p = sampled ? 0.9 : 1.0;
    p.seed = static_cast<uint64_t>(r + 1);
    p.ignore_eos = true;
    GenerateResult res = runner.Generate(RandomIds(16, vocab, 99), p);
    best = std::max(best, (res.completion_tokens - 1) / (res.decode_ms / 1000.0));
  }
  out[sampled ? "decode_batch1_t0.7_top_p0.9_tokens_per_s" : "decode_batch1_tokens_per_s"] = best;
}

void MeasureDecodeEight(const FrontEnd& front, Runner& runner, int repeats, nlohmann::json& out) {
  const int64_t vocab = front.tokenizer().VocabSize();
  // Eight concurrent generations stepped together, as the scheduler runs
  // them: their decode steps share one forward pass.
  constexpr int kConcurrent = 8, kSteps = 17;
  double best = 0;
  for (int r = 0; r < std::max(1, repeats - 1); ++r) {
    SamplingParams p;
    p.max_tokens = kSteps;
    p.temperature = 0;
    p.ignore_eos = true;
    std::vector<std::unique_ptr<Sequence>> gens;
    std::vector<Sequence*> raw;
    for (int i = 0; i < kConcurrent; ++i) {
      gens.push_back(runner.StartGeneration(RandomIds(16, vocab, 200 + i), p));
      raw.push_back(gens.back().get());
    }
    std::vector<std::exception_ptr> errors;
    for (Sequence* g : raw) g->Step();  // prefills, outside the timing
    auto t0 = std::chrono::steady_clock::now();
    int64_t tokens = 0;
    while (!raw.empty()) {
      std::vector<bool> more = runner.StepAll(raw, &errors);
      tokens += static_cast<int64_t>(raw.size());
      std::vector<Sequence*> still;
      for (size_t i = 0; i < raw.size(); ++i) {
        if (more[i]) still.push_back(raw[i]);
      }
      raw = std::move(still);
    }
    best = std::max(best, static_cast<double>(tokens) / Seconds(t0));
  }
  out["decode_8_concurrent_tokens_per_s"] = best;
}

// The CPU's features and which kernel paths this run chose among them, so
// that a result says what it measured (GRITSERVE_CPU_ISA=avx2 included).
nlohmann::json CpuJson() {
  return {{"has_avx2", kernels::CpuHasAvx2()},
          {"has_avx512", kernels::CpuHasAvx512()},
          {"has_avx512_vnni", kernels::CpuHasAvx512Vnni()},
          {"has_avx_vnni", kernels::CpuHasAvxVnni()},
          {"bf16_products", Linear::CpuBf16Available()},
          {"dispatch", kernels::Dispatch::Current().Describe()},
          {"fused_kernels", kernels::IsaName(kernels::ActiveIsa())},
          {"bf16_panels", kernels::IsaName(small_gemm::Bf16PanelIsa())},
          {"quantized_rows", quant::Int8RowsName(quant::DispatchedIsa())}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve engine benchmark"};
  int repeats = 3;
  bench::ModelOptions model_options;
  model_options.Add(app);
  app.add_option("--repeats", repeats, "runs per measurement (best is reported)");
  std::vector<std::string> only;
  app.add_option("--only", only,
                 "measurements to run (prefill, embed, decode_1, decode_1_sampled, decode_8); "
                 "default all")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  auto runs = [&only](const std::string& name) {
    return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
  };
  ConfigureAllocatorForInference();
  spdlog::set_level(spdlog::level::warn);

  const EngineOptions eo = model_options.Resolved();
  const std::string model = eo.model_dir;
  auto loaded = Engine::Load(eo);
  const FrontEnd& front = loaded->front();
  Runner& runner = loaded->runner();

  nlohmann::json out;
  out["model"] = model;
  out["device"] = front.device_name();
  out["dtype"] = front.dtype_name();
  out["cpu"] = CpuJson();
  out["weights"] = eo.weights;
  out["parameters"] = front.config().NumParameters();
  out["loaded_resident_bytes"] = bench::ResidentBytes();
  if (runs("prefill")) MeasurePrefill(front, runner, repeats, out);
  if (runs("embed")) MeasureEmbed(front, runner, repeats, out);
  if (runs("decode_1")) MeasureDecodeOne(front, runner, repeats, /*sampled=*/false, out);
  if (runs("decode_1_sampled")) MeasureDecodeOne(front, runner, repeats, /*sampled=*/true, out);
  if (runs("decode_8")) MeasureDecodeEight(front, runner, repeats, out);
  out["peak_resident_bytes"] = bench::PeakResidentBytes();
  std::cout << out.dump(2) << "\n";
  return 0;
}
