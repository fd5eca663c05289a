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
  // /rerank's order (cosine of query and document embeddings): the share of
  // document pairs the test model orders as the reference does, and of
  // queries whose best document is the same.
  double rerank_pair_agreement = 0;
  double rerank_top1_agreement = 0;
  int64_t rerank_pairs = 0;
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

// Documents for a rerank query [T]: document j keeps the query's tokens at
// about j / n of its positions and puts other tokens (a fixed hash, in
// [0, vocab)) at the rest, so that relevance falls off with j by construction
// and the reference's order is not a tie broken by noise.  -> n x [T]
inline std::vector<at::Tensor> RerankDocuments(const at::Tensor& query, int64_t n, int64_t vocab) {
  const at::Tensor q = query.to(at::kLong).contiguous();
  const int64_t t = q.size(0);
  std::vector<at::Tensor> docs;
  for (int64_t j = 0; j < n; ++j) {
    at::Tensor d = q.clone();
    int64_t* ids = d.data_ptr<int64_t>();
    for (int64_t p = 0; p < t; ++p) {
      if ((p * 7 + j) % n < j) continue;  // kept: about j / n of them
      const uint64_t h = static_cast<uint64_t>(ids[p]) * 2654435761u + p * 40503u + j * 97u;
      ids[p] = static_cast<int64_t>(h % static_cast<uint64_t>(vocab));
    }
    docs.push_back(d);
  }
  return docs;
}

// Each model's cosines of the query and each document ([N] double).
inline at::Tensor RerankScores(const Decoder& d, const at::Tensor& query,
                               const std::vector<at::Tensor>& docs) {
  const at::Tensor qe = Embedding(d, query);
  std::vector<at::Tensor> s;
  for (const at::Tensor& doc : docs) s.push_back(qe.dot(Embedding(d, doc)));
  return at::stack(s);
}

// Documents per rerank query.
constexpr int64_t kRerankDocuments = 8;

// One query's rerank: counts (in r, as sums) the document pairs both models
// order alike and whether their best documents agree.
inline void AddRerank(const Decoder& ref, const Decoder& test, const at::Tensor& query, Report* r) {
  const auto docs = RerankDocuments(query, kRerankDocuments, ref.config().vocab_size);
  const at::Tensor sr = RerankScores(ref, query, docs), st = RerankScores(test, query, docs);
  for (int64_t a = 0; a < kRerankDocuments; ++a) {
    for (int64_t b = a + 1; b < kRerankDocuments; ++b) {
      const bool ref_order = sr[a].item<double>() > sr[b].item<double>();
      const bool test_order = st[a].item<double>() > st[b].item<double>();
      r->rerank_pair_agreement += ref_order == test_order ? 1 : 0;
      ++r->rerank_pairs;
    }
  }
  r->rerank_top1_agreement += sr.argmax().item<int64_t>() == st.argmax().item<int64_t>() ? 1 : 0;
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
    AddRerank(ref, test, prompt, &r);
  }
  r.top1_agreement =
      static_cast<double>(agree) / static_cast<double>(std::max<int64_t>(1, r.steps));
  const double pairs = static_cast<double>(std::max<int64_t>(1, r.rerank_pairs));
  r.rerank_pair_agreement /= pairs;
  r.rerank_top1_agreement /= static_cast<double>(std::max<size_t>(1, prompts.size()));
  return r;
}

}  // namespace gritserve::quant_quality
