// The sampler against a reference written with ATen's sort and softmax (the
// straightforward full-vocabulary algorithm): the same picks for the same seed
// with top-k, top-p (where the pre-filter holds the nucleus and where it does
// not), plain temperature and greedy; and tokens past the vocabulary limit
// are never picked.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <tuple>

#include "gritserve/engine/sampler.h"

namespace gritserve {
namespace {

// The splitmix64 stream the sampler draws from, for the reference.
class Uniform {
 public:
  explicit Uniform(uint64_t seed) : state_(seed) {}
  double Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
  }

 private:
  uint64_t state_;
};

int32_t ReferenceSample(const at::Tensor& logits, const SamplingParams& p, Uniform& u) {
  if (p.temperature <= 0) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  const int64_t v = logits.size(0);
  at::Tensor values, indices;  // candidates, best first
  if (p.top_k > 0 && p.top_k < v) {
    std::tie(values, indices) = logits.topk(p.top_k);
  } else if (p.top_p < 1.0) {
    std::tie(values, indices) = logits.sort(0, /*descending=*/true);
  } else {
    values = logits;
  }
  at::Tensor probs = at::softmax(values.to(at::kDouble) / p.temperature, 0).contiguous();
  const double* pr = probs.data_ptr<double>();
  int64_t n = probs.size(0);
  if (p.top_p < 1.0 && indices.defined()) {
    double mass = 0;
    int64_t keep = 0;
    while (keep < n && mass < p.top_p) mass += pr[keep++];
    n = std::max<int64_t>(keep, 1);
  }
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += pr[i];
  const double r = u.Next() * total;
  double acc = 0;
  int64_t pick = n - 1;
  for (int64_t i = 0; i < n; ++i) {
    acc += pr[i];
    if (r < acc) {
      pick = i;
      break;
    }
  }
  return static_cast<int32_t>(indices.defined() ? indices[pick].item<int64_t>() : pick);
}

// Draws `steps` tokens from fresh random logits with both and counts disagreements.
int Disagreements(SamplingParams p, double logit_scale, int steps) {
  const int64_t vocab = 5000;
  at::manual_seed(7);
  Sampler sampler(p, vocab);
  Uniform u(p.seed);
  int differ = 0;
  for (int s = 0; s < steps; ++s) {
    at::Tensor logits = at::randn({vocab}) * logit_scale;  // [V]
    const int32_t got = sampler.Sample(logits.data_ptr<float>(), vocab);
    if (got != ReferenceSample(logits, p, u)) ++differ;
  }
  return differ;
}

SamplingParams Params(double temperature, int64_t top_k, double top_p) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = 1234;
  return p;
}

TEST(SamplerTest, MatchesTheFullSortReference) {
  // Peaked logits: the top-p nucleus lies within the pre-filter.
  EXPECT_EQ(Disagreements(Params(0.7, 0, 0.9), 6.0, 300), 0);
  // Flat logits: the nucleus needs more tokens than the pre-filter holds.
  EXPECT_EQ(Disagreements(Params(1.0, 0, 0.95), 0.5, 100), 0);
  EXPECT_EQ(Disagreements(Params(0.8, 40, 1.0), 3.0, 300), 0);
  EXPECT_EQ(Disagreements(Params(0.8, 40, 0.5), 3.0, 300), 0);
  EXPECT_EQ(Disagreements(Params(1.3, 0, 1.0), 2.0, 300), 0);
  EXPECT_EQ(Disagreements(Params(0.0, 0, 1.0), 2.0, 100), 0);
}

TEST(SamplerTest, SamplingFollowsTheDistribution) {
  // Two tokens with probabilities 0.25 and 0.75 at temperature 1.
  std::vector<float> logits = {0.0f, static_cast<float>(std::log(3.0)), -1e9f};
  Sampler s(Params(1.0, 0, 1.0), 3);
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.Sample(logits.data(), 3) == 1;
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.02);
  // top_p 0.5 keeps only the likelier one.
  Sampler nucleus(Params(1.0, 0, 0.5), 3);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(nucleus.Sample(logits.data(), 3), 1);
}

TEST(SamplerTest, TokensPastTheLimitAreNeverPicked) {
  std::vector<float> logits(100, 0.0f);
  logits[99] = 50.0f;  // a padding row of the LM head, far above every real token
  Sampler greedy(Params(0.0, 0, 1.0), 90);
  EXPECT_LT(greedy.Sample(logits.data(), 100), 90);
  Sampler sampled(Params(1.0, 0, 0.9), 90);
  for (int i = 0; i < 200; ++i) EXPECT_LT(sampled.Sample(logits.data(), 100), 90);
}

}  // namespace
}  // namespace gritserve
