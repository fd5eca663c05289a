// Quality of --weights q8 and q4, and of bfloat16 matrix products (--dtype
// bfloat16 on a CPU with native bfloat16), against the float32 model: max
// |dlogit|, greedy top-1 agreement, embedding cosine and rerank order
// agreement (quant_quality.h), on
// the Qwen2.5-0.5B shape (random weights, bfloat16 as published) unless
// --model names another checkpoint. Prints JSON; not a test.
//   bench_quant_quality [--model DIR] [--prompts N] [--steps N]
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "bench_util.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/model/config.h"
#include "gritserve/model/weights.h"
#include "quant_quality.h"

using namespace gritserve;

namespace {

// matmul kBFloat16 with a format: what --weights q8|q4 loads with dtype auto
// on a CPU with native bfloat16 products (prompt-sized products in bfloat16).
std::unique_ptr<Decoder> Load(const std::string& dir, std::optional<quant::Format> format,
                              at::ScalarType matmul = at::kFloat) {
  const ModelConfig config = ModelConfig::FromDirectory(dir);
  return std::make_unique<Decoder>(
      config,
      LoadWeights(dir, config, at::kFloat, at::kCPU, at::ScalarType::Undefined,
                  /*keep_bfloat16_matrices=*/true),
      matmul, format);
}

// What --dtype bfloat16 loads on a CPU with native bfloat16 products.
std::unique_ptr<Decoder> LoadBf16Products(const std::string& dir) {
  const ModelConfig config = ModelConfig::FromDirectory(dir);
  return std::make_unique<Decoder>(config,
                                   LoadWeights(dir, config, at::kFloat, at::kCPU, at::kBFloat16),
                                   at::kBFloat16, std::nullopt);
}

nlohmann::json ToJson(const quant_quality::Report& r) {
  return {{"max_abs_dlogit", r.max_abs_dlogit},
          {"max_abs_logit", r.max_abs_logit},
          {"top1_agreement", r.top1_agreement},
          {"greedy_steps", r.steps},
          {"min_embed_cosine", r.min_embed_cosine},
          {"mean_embed_cosine", r.mean_embed_cosine},
          {"rerank_pair_agreement", r.rerank_pair_agreement},
          {"rerank_top1_agreement", r.rerank_top1_agreement},
          {"rerank_pairs", r.rerank_pairs}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve quantized-weight quality"};
  std::string model;
  int prompts = 4, steps = 32;
  app.add_option("--model", model, "model directory (default: generate the 0.5B shape)");
  app.add_option("--prompts", prompts, "random prompts (16 to 256 tokens)")->capture_default_str();
  app.add_option("--steps", steps, "greedy steps per prompt")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  if (model.empty()) model = bench::DefaultBenchModel("bf16");
  c10::InferenceMode guard;
  const int64_t vocab = ModelConfig::FromDirectory(model).vocab_size;
  std::vector<at::Tensor> ids;
  for (int i = 0; i < prompts; ++i) {
    const std::vector<int32_t> p = bench::RandomIds(16 << (i % 5), vocab, 500 + i);
    ids.push_back(at::tensor(std::vector<int64_t>(p.begin(), p.end()), at::kLong));
  }
  const auto ref = Load(model, std::nullopt);
  nlohmann::json out;
  out["model"] = model;
  for (quant::Format f : {quant::Format::kQ8, quant::Format::kQ4}) {
    const auto q = Load(model, f);
    out[quant::FormatName(f)] = ToJson(quant_quality::Compare(*ref, *q, ids, steps));
    out[quant::FormatName(f)]["quantized_bytes"] = q->quantized_bytes();
  }
  if (Linear::CpuBf16Available()) {
    out["bf16_products"] =
        ToJson(quant_quality::Compare(*ref, *LoadBf16Products(model), ids, steps));
    for (quant::Format f : {quant::Format::kQ8, quant::Format::kQ4}) {
      out[std::string(quant::FormatName(f)) + "_bf16_products"] =
          ToJson(quant_quality::Compare(*ref, *Load(model, f, at::kBFloat16), ids, steps));
    }
  } else {
    out["bf16_products"] = "not measured: this CPU has no native bfloat16 products";
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
