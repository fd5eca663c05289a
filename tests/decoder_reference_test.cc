// The decoder against an independent implementation of Hugging Face's Llama,
// Mistral and Qwen2 conventions (tools/make_reference_fixtures.py, numpy in
// float64) on tiny random checkpoints: llama3 RoPE scaling and an untied head,
// a Mistral sliding window shorter than the prompts, and Qwen2's
// max_window_layers (a full-attention layer before a windowed one).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "gritserve/cache/kv_cache.h"
#include "gritserve/model/decoder.h"
#include "tensor_json.h"
#include "test_util.h"

namespace gritserve {
namespace {

using nlohmann::json;

struct Fixture {
  const char* dir;
  const char* kernels;  // GRITSERVE_CPU_KERNELS for the decoder; "" for the default
};

class DecoderReferenceTest : public ::testing::TestWithParam<Fixture> {
 protected:
  void SetUp() override {
    at::set_num_threads(2);
    dir_ = testing::FixturesDir() + "/" + GetParam().dir;
    config_ = ModelConfig::FromDirectory(dir_);
    if (*GetParam().kernels != '\0') {
      ASSERT_EQ(::setenv("GRITSERVE_CPU_KERNELS", GetParam().kernels, 1), 0);
    }
    decoder_ = std::make_unique<Decoder>(config_, LoadWeights(dir_, config_, at::kFloat, at::kCPU));
    ::unsetenv("GRITSERVE_CPU_KERNELS");
    reference_ = json::parse(testing::ReadFile(dir_ + "/reference.json"));
    ASSERT_EQ(reference_["cases"].size(), 3u);
  }

  static at::Tensor FromJson(const json& j) { return testing::TensorFromJson(j); }
  static ForwardInput Input(const std::vector<int64_t>& ids, int64_t start, AttentionSpec spec) {
    const int64_t n = static_cast<int64_t>(ids.size());
    ForwardInput in;
    in.ids = at::tensor(ids, at::kLong).view({1, n});                     // [1, T]
    in.positions = at::arange(start, start + n, at::kLong).view({1, n});  // [1, T]
    in.attention = spec;
    return in;
  }
  static double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>();
  }

  c10::InferenceMode guard_;
  std::string dir_;
  ModelConfig config_;
  std::unique_ptr<Decoder> decoder_;
  json reference_;
};

TEST_P(DecoderReferenceTest, HiddenStatesMatch) {
  for (const auto& c : reference_["cases"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    at::Tensor causal = decoder_->Forward(Input(ids, 0, AttentionSpec::Causal()), nullptr)[0];
    at::Tensor bidir = decoder_->Forward(Input(ids, 0, AttentionSpec::Bidirectional()), nullptr)[0];
    EXPECT_LE(MaxDiff(causal, FromJson(c["causal_hidden"])), 2e-4) << c["text"];
    EXPECT_LE(MaxDiff(bidir, FromJson(c["bidirectional_hidden"])), 2e-4) << c["text"];
    const double cos =
        at::cosine_similarity(bidir.mean(0), FromJson(c["bidirectional_mean"]), 0).item<double>();
    EXPECT_GE(cos, 0.99999) << c["text"];
  }
}

// Prefill, then one token at a time: past the window, each decode step's mask
// drops the oldest keys (and on Qwen2 only in the windowed layer).
TEST_P(DecoderReferenceTest, GreedyTokensMatchWithKvCache) {
  for (const auto& c : reference_["cases"]) {
    const auto expected = c["greedy_tokens"].get<std::vector<int64_t>>();
    ASSERT_EQ(expected.size(), 16u);
    KvCache cache = decoder_->NewCache(1);
    std::vector<int64_t> feed = c["ids"].get<std::vector<int64_t>>(), got;
    for (size_t step = 0; step < expected.size(); ++step) {
      at::Tensor h =
          decoder_->Forward(Input(feed, cache.length(), AttentionSpec::Causal()), &cache)[0];
      got.push_back(decoder_->Logits(h.narrow(0, h.size(0) - 1, 1))[0].argmax().item<int64_t>());
      feed = {got.back()};
    }
    EXPECT_EQ(got, expected) << c["text"];
  }
}

// The three prompts in one ForwardMany pass, as concurrent generations run.
TEST_P(DecoderReferenceTest, BatchedPromptsMatch) {
  std::vector<ForwardInput> inputs;
  std::vector<KvCache> caches;
  for (const auto& c : reference_["cases"]) {
    inputs.push_back(Input(c["ids"].get<std::vector<int64_t>>(), 0, AttentionSpec::Causal()));
    caches.push_back(decoder_->NewCache(1));
  }
  std::vector<KvCache*> cache_ptrs;
  for (KvCache& k : caches) cache_ptrs.push_back(&k);
  at::Tensor rows = decoder_->ForwardMany(inputs, cache_ptrs, false);  // [N, H]
  int64_t at_row = 0;
  for (const auto& c : reference_["cases"]) {
    at::Tensor want = FromJson(c["causal_hidden"]);
    EXPECT_LE(MaxDiff(rows.narrow(0, at_row, want.size(0)), want), 2e-4) << c["text"];
    at_row += want.size(0);
  }
  EXPECT_EQ(at_row, rows.size(0));
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, DecoderReferenceTest,
    ::testing::Values(Fixture{"llama-tiny", ""}, Fixture{"llama-tiny", "aten"},
                      Fixture{"mistral-tiny", ""}, Fixture{"mistral-tiny", "aten"},
                      Fixture{"qwen2-window-tiny", ""}, Fixture{"qwen2-window-tiny", "aten"}),
    [](const ::testing::TestParamInfo<Fixture>& info) {
      std::string name = std::string(info.param.dir) + (*info.param.kernels ? "_aten" : "");
      for (char& ch : name) ch = ch == '-' ? '_' : ch;
      return name;
    });

}  // namespace
}  // namespace gritserve
