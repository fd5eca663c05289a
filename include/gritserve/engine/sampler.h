// Picks a generation's next token from its logits: greedy, or temperature with
// optional top-k and top-p (nucleus) filtering, reproducibly for a seed.
#pragma once

#include <cstdint>
#include <vector>

#include "gritserve/engine/types.h"

namespace gritserve {

class Sampler {
 public:
  // Tokens at or past `vocab_limit` (padding rows of the LM head) are never picked.
  Sampler(const SamplingParams& params, int64_t vocab_limit);

  // logits: [n] float32. Allocates nothing once its buffers have grown to size.
  int32_t Sample(const float* logits, int64_t n);

  // How many of the best tokens a top-p step looks at before it sorts the whole
  // vocabulary: the nucleus almost always lies within them.
  static constexpr int64_t kTopPPrefilter = 256;

 private:
  double NextUniform();
  // Fills candidates_ with the `k` best of `n` tokens, best first (ties: lower id first).
  void TopCandidates(const float* logits, int64_t n, int64_t k);

  SamplingParams params_;
  int64_t vocab_limit_;
  uint64_t state_;  // splitmix64 state: reproducible across platforms for a seed
  std::vector<int32_t> candidates_;
  std::vector<double> weights_;  // [n] exp((logit - max) / temperature)
};

}  // namespace gritserve
