// Quality of a quantized decoder against its float32 original, measured the
// same way by the test on the tiny fixture (tests/model_quant_quality_test.cc)
// and by bench_quant_quality on bigger checkpoints.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gritserve/model/decoder.h"

namespace gritserve::quant_quality {

struct Report {
  double max_abs_dlogit = 0;    // over the greedy steps' logits
  double max_abs_logit = 0;     // of the float32 logits there, for scale
  double top1_agreement = 0;    // fraction of greedy steps whose argmax matches
  double min_embed_cosine = 1;  // mean-pooled bidirectional embeddings
  double mean_embed_cosine = 0;
  int64_t steps = 0;
};

// ids: [T] -> one sequence at positions 0.. with `attention`
inline ForwardInput Sequence(const at::Tensor& ids, AttentionSpec attention) {
  const int64_t t = ids.size(0);
  ForwardInput in;
  in.ids = ids.view({1, t});
  in.positions = at::arange(t, at::kLong).view({1, t});
  in.attention = attention;
  return in;
}

// ids: [T] -> next-token logits at every position [T, V]
inline at::Tensor CausalLogits(const Decoder& d, const at::Tensor& ids) {
  return d.Logits(
      d.Forward(Sequence(ids, AttentionSpec::Causal()), nullptr).view({ids.size(0), -1}));
}

// ids: [T] -> the greedy next token after them [1]. Only the last position
// goes through the LM head: with the real vocabulary it is most of the work
// of the tiny fixture's forward pass.
inline at::Tensor GreedyNext(const Decoder& d, const at::Tensor& ids) {
  ForwardInput in = Sequence(ids, AttentionSpec::Causal());
  in.last_position_only = true;
  return d.Logits(d.Forward(in, nullptr).view({1, -1}))[0].argmax().view({1});
}

// ids: [T] -> the L2-normalised mean of the bidirectional final hidden states [H]
inline at::Tensor Embedding(const Decoder& d, const at::Tensor& ids) {
  const int64_t t = ids.size(0);
  const ForwardInput in = Sequence(ids, AttentionSpec::Bidirectional());
  const at::Tensor mean = d.Forward(in, nullptr).view({t, -1}).to(at::kDouble).mean(0);
  return mean / mean.norm();
}

// `steps` greedy tokens of `ref` after each prompt (ids [T_i]); `test`'s
// logits at those steps, given ref's tokens, are compared with ref's.
inline Report Compare(const Decoder& ref, const Decoder& test,
                      const std::vector<at::Tensor>& prompts, int64_t steps) {
  Report r;
  int64_t agree = 0;
  for (const at::Tensor& prompt : prompts) {
    at::Tensor seq = prompt;  // [T]
    for (int64_t s = 0; s < steps; ++s) {
      seq = at::cat({seq, GreedyNext(ref, seq)});
    }
    const int64_t t0 = prompt.size(0) - 1, n = steps;  // logits at t0.. predict the steps
    const at::Tensor lr = CausalLogits(ref, seq).narrow(0, t0, n).to(at::kDouble);
    const at::Tensor lt = CausalLogits(test, seq).narrow(0, t0, n).to(at::kDouble);
    r.max_abs_dlogit = std::max(r.max_abs_dlogit, (lt - lr).abs().max().item<double>());
    r.max_abs_logit = std::max(r.max_abs_logit, lr.abs().max().item<double>());
    agree += lt.argmax(1).eq(seq.narrow(0, t0 + 1, n)).sum().item<int64_t>();
    r.steps += n;
    const double cos = Embedding(ref, prompt).dot(Embedding(test, prompt)).item<double>();
    r.min_embed_cosine = std::min(r.min_embed_cosine, cos);
    r.mean_embed_cosine += cos / static_cast<double>(prompts.size());
  }
  r.top1_agreement =
      static_cast<double>(agree) / static_cast<double>(std::max<int64_t>(1, r.steps));
  return r;
}

}  // namespace gritserve::quant_quality
