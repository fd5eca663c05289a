// --weights q8|q4 on the tiny Qwen2 fixture (a bfloat16 checkpoint, random
// weights) against the float32 model: logits, greedy top-1 agreement and
// embedding cosine stay within bounds set by each format's precision; and a
// quantized decoder refuses what it cannot run.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <iostream>
#include <memory>
#include <optional>
#include <vector>

#include "../bench/quant_quality.h"  // shared with bench_quant_quality
#include "gritserve/common/error.h"
#include "gritserve/model/config.h"
#include "gritserve/model/decoder.h"
#include "gritserve/model/weights.h"
#include "test_util.h"

namespace gritserve {
namespace {

std::string Dir() { return testing::FixturesDir() + "/qwen2-tiny"; }

// matmul kBFloat16 with a format: prompt-sized quantized products in
// bfloat16 where the CPU has native bfloat16 products (what dtype auto picks
// there), the int8 and float32 paths elsewhere.
std::unique_ptr<Decoder> Load(std::optional<quant::Format> format,
                              at::ScalarType matmul = at::kFloat) {
  const ModelConfig config = ModelConfig::FromDirectory(Dir());
  return std::make_unique<Decoder>(
      config,
      LoadWeights(Dir(), config, at::kFloat, at::kCPU, at::ScalarType::Undefined,
                  /*keep_bfloat16_matrices=*/true),
      matmul, format);
}

std::vector<at::Tensor> Prompts() {
  at::manual_seed(11);
  std::vector<at::Tensor> prompts;
  for (int64_t t : {7, 24, 61}) prompts.push_back(at::randint(0, 151000, {t}, at::kLong));
  return prompts;
}

struct Bounds {
  double dlogit_fraction;  // max |dlogit| / max |logit|
  double top1;
  double cosine;
  double rerank_pairs;  // share of document pairs in the reference's order
};

void Print(const char* what, const quant_quality::Report& r) {
  std::cout << what << ": max |dlogit| " << r.max_abs_dlogit << " (max |logit| " << r.max_abs_logit
            << "), top-1 agreement " << r.top1_agreement << " over " << r.steps
            << " steps, embedding cosine min " << r.min_embed_cosine << " mean "
            << r.mean_embed_cosine << ", rerank pair agreement " << r.rerank_pair_agreement
            << " over " << r.rerank_pairs << " pairs, best document agreement "
            << r.rerank_top1_agreement << "\n";
}

void ExpectWithin(const quant_quality::Report& r, const Bounds& b) {
  EXPECT_LE(r.max_abs_dlogit, b.dlogit_fraction * r.max_abs_logit);
  EXPECT_GE(r.top1_agreement, b.top1);
  EXPECT_GE(r.min_embed_cosine, b.cosine);
  EXPECT_GT(r.rerank_pairs, 0);
  EXPECT_GE(r.rerank_pair_agreement, b.rerank_pairs);
  // Not vacuous: the compared model differs from the original.
  EXPECT_GT(r.max_abs_dlogit, 0.0);
}

void Check(quant::Format format, const Bounds& b, at::ScalarType matmul = at::kFloat) {
  c10::InferenceMode guard;
  const auto ref = Load(std::nullopt);
  const auto q = Load(format, matmul);
  ASSERT_EQ(q->weights_format(), format);
  EXPECT_GT(q->quantized_bytes(), 0);
  const quant_quality::Report r = quant_quality::Compare(*ref, *q, Prompts(), 24);
  Print(quant::FormatName(format), r);
  ExpectWithin(r, b);
}

// q8's weight error is half a step of 1/127 of each block's largest value
// (about 0.5% of a Gaussian weight's spread); q4's half a step of 1/15 of its
// range (about 8%), and a random model's near-flat logits make its greedy
// choices fragile.
constexpr Bounds kQ8Bounds{0.1, 0.9, 0.999, 0.9};

TEST(QuantQuality, Q8StaysCloseToFloat32OnTheTinyModel) { Check(quant::Format::kQ8, kQ8Bounds); }

TEST(QuantQuality, Q4StaysNearFloat32OnTheTinyModel) {
  Check(quant::Format::kQ4, {0.6, 0.4, 0.97, 0.75});
}

// q8 with its prompt-sized products in bfloat16 (the 61-token prompt and the
// embeddings take them; fewer rows keep the int8 kernels): still q8's bounds.
TEST(QuantQuality, Q8WithBfloat16ProductsHoldsQ8sBoundsOnTheTinyModel) {
  Check(quant::Format::kQ8, kQ8Bounds, at::kBFloat16);
}

// --dtype bfloat16 on CPU: weights and the products' inputs rounded to
// bfloat16 (8 significant bits, float32 accumulation). It must hold q8's
// bounds, since `auto` picks it on CPUs with native bfloat16 (AutoCpuDtype).
TEST(QuantQuality, Bfloat16ProductsHoldQ8sBoundsOnTheTinyModel) {
  c10::InferenceMode guard;
  const ModelConfig config = ModelConfig::FromDirectory(Dir());
  const auto ref = Load(std::nullopt);
  const Decoder bf16(config, LoadWeights(Dir(), config, at::kFloat, at::kCPU, at::kBFloat16),
                     at::kBFloat16, std::nullopt);
  ASSERT_EQ(bf16.matmul_dtype(), at::kBFloat16);
  const quant_quality::Report r = quant_quality::Compare(*ref, bf16, Prompts(), 24);
  Print("bfloat16 products", r);
  ExpectWithin(r, kQ8Bounds);
}

TEST(QuantQuality, QuantizedWeightsNeedCpuFloat32) {
  const ModelConfig config = ModelConfig::FromDirectory(Dir());
  c10::InferenceMode guard;
  EXPECT_THROW(Decoder(config, LoadWeights(Dir(), config, at::kBFloat16, at::kCPU), at::kBFloat16,
                       quant::Format::kQ8),
               Error);
}

}  // namespace
}  // namespace gritserve
