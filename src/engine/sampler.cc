#include "gritserve/engine/sampler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace gritserve {

Sampler::Sampler(const SamplingParams& params, int64_t vocab_limit)
    : params_(params), vocab_limit_(vocab_limit), state_(params.seed) {}

double Sampler::NextUniform() {
  // splitmix64: tiny, fast, and the same sequence on every platform.
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

void Sampler::TopCandidates(const float* logits, int64_t n, int64_t k) {
  candidates_.resize(static_cast<size_t>(n));
  std::iota(candidates_.begin(), candidates_.end(), 0);
  auto better = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  if (k < n) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(), better);
    candidates_.resize(static_cast<size_t>(k));
  } else {
    std::sort(candidates_.begin(), candidates_.end(), better);
  }
}

int32_t Sampler::Sample(const float* logits, int64_t n) {
  n = std::min(vocab_limit_, n);
  if (params_.temperature <= 0.0) {
    return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
  }
  // exp((logit - max) / T) for every token, in double, vectorised by ATen
  // into a buffer that lives as long as the sampler.
  const float top = *std::max_element(logits, logits + n);
  weights_.resize(static_cast<size_t>(n));
  at::Tensor w = at::from_blob(weights_.data(), {n}, at::kDouble);  // [n]
  w.copy_(at::from_blob(const_cast<float*>(logits), {n}, at::kFloat));
  w.sub_(static_cast<double>(top)).mul_(1.0 / params_.temperature).exp_();
  // The softmax's normaliser: over the top-k candidates with top_k, else over
  // the whole vocabulary (so a pre-filtered top-p step sees true probabilities).
  double z = 0;
  bool sorted = true;
  if (params_.top_k > 0 && params_.top_k < n) {
    TopCandidates(logits, n, params_.top_k);
    for (int32_t id : candidates_) z += weights_[static_cast<size_t>(id)];
  } else {
    z = w.sum().item<double>();
    if (params_.top_p < 1.0) {
      TopCandidates(logits, n, std::min(kTopPPrefilter, n));
      double mass = 0;
      for (int32_t id : candidates_) mass += weights_[static_cast<size_t>(id)];
      if (mass < params_.top_p * z) TopCandidates(logits, n, n);  // flat: sort it all
    } else {
      sorted = false;  // plain temperature: every token, in id order
      candidates_.resize(static_cast<size_t>(n));
      std::iota(candidates_.begin(), candidates_.end(), 0);
    }
  }
  size_t keep = candidates_.size();
  if (params_.top_p < 1.0 && sorted) {
    // Smallest prefix whose mass reaches top_p (at least one token).
    double mass = 0;
    keep = 0;
    while (keep < candidates_.size() && mass < params_.top_p) {
      mass += weights_[static_cast<size_t>(candidates_[keep++])] / z;
    }
    keep = std::max<size_t>(keep, 1);
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += weights_[static_cast<size_t>(candidates_[i])] / z;
  const double r = NextUniform() * total;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += weights_[static_cast<size_t>(candidates_[i])] / z;
    if (r < acc) return candidates_[i];
  }
  return candidates_[keep - 1];
}

}  // namespace gritserve
