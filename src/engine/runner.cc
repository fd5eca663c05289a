// The runner: the model, driven from the inference thread. Embeddings here;
// generation steps in sequence.cc.
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "engine_impl.h"
#include "gritserve/common/error.h"

namespace gritserve {
namespace {

// A pooled hidden state [H] (float32, CPU) as the response vector.
std::vector<float> ResponseVector(at::Tensor pooled, const EmbedOptions& options, int64_t hidden) {
  at::Tensor row = pooled.narrow(0, 0, options.dimensions > 0 ? options.dimensions : hidden);
  if (options.normalize) row = row / row.norm().clamp_min(1e-12);
  row = row.contiguous();
  return std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
}

// A store entry from row `i` of a batch's KV cache and its pooled vectors.
DocKvEntry EntryFromBatch(const DocKey& key, const EncodedPrompt& p, const KvCache& cache,
                          int64_t i, at::Tensor mean, at::Tensor last) {
  const int64_t n = static_cast<int64_t>(p.ids.size());
  DocKvEntry e;
  e.key = key;
  e.source = KvSource::kEmbed;
  e.ids = p.ids;
  e.text_begin = p.text_begin;
  e.text_end = p.text_end;
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    e.keys.push_back(cache.keys(l)[i].narrow(1, 0, n).clone());  // [Hkv, T, D]
    e.values.push_back(cache.values(l)[i].narrow(1, 0, n).clone());
  }
  mean = mean.contiguous();
  last = last.contiguous();
  e.mean.assign(mean.data_ptr<float>(), mean.data_ptr<float>() + mean.numel());
  e.last.assign(last.data_ptr<float>(), last.data_ptr<float>() + last.numel());
  return e;
}

}  // namespace

Runner::Runner(const FrontEnd& front, std::unique_ptr<Impl> impl)
    : front_(front), impl_(std::move(impl)) {}
Runner::~Runner() = default;

std::vector<std::vector<float>> Runner::EmbedTexts(const std::vector<std::string>& texts,
                                                   const EmbedOptions& options) {
  std::vector<EncodedPrompt> prompts;
  prompts.reserve(texts.size());
  for (const auto& t : texts) prompts.push_back(front_.EncodeEmbed(t, options));
  return Embed(prompts, options);
}

namespace {

// The batch order[start, end) of prompts, padded to its longest (the first)
// and run bidirectionally; fills their responses, and with `keep` stores
// each one's K/V from this same pass.
void EmbedBatch(const Runner::Impl& r, const std::vector<EncodedPrompt>& prompts,
                const std::vector<size_t>& order, size_t start, size_t end,
                const EmbedOptions& options, bool keep, const std::vector<DocKey>& keys,
                std::vector<std::vector<float>>* out) {
  const int64_t hidden = r.shared.config.hidden_size;
  const int64_t t = static_cast<int64_t>(prompts[order[start]].ids.size());
  const int64_t b = static_cast<int64_t>(end - start);
  at::Tensor ids = at::zeros({b, t}, at::kLong);    // [B, T]
  at::Tensor valid = at::zeros({b, t}, at::kBool);  // [B, T]
  auto ids_a = ids.accessor<int64_t, 2>();
  auto valid_a = valid.accessor<bool, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& p = prompts[order[start + i]];
    for (size_t j = 0; j < p.ids.size(); ++j) {
      ids_a[i][j] = p.ids[j];
      valid_a[i][j] = true;
    }
  }
  ForwardInput in;
  in.ids = ids;
  in.positions = at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
  in.valid = valid;
  in.attention = AttentionSpec::Bidirectional();
  in.num_layers = keep ? -1 : options.layer;
  // With kKeep the same pass fills a KV cache whose rows become store entries.
  KvCache cache = keep ? r.decoder->NewCache(b) : KvCache();
  at::Tensor h =
      r.decoder->Forward(in, keep ? &cache : nullptr).to(at::kCPU).to(at::kFloat);  // [B, T, H]
  for (int64_t i = 0; i < b; ++i) {
    const size_t idx = order[start + i];
    const auto& p = prompts[idx];
    const int64_t tb = static_cast<int64_t>(p.text_begin);
    const int64_t te = static_cast<int64_t>(p.text_end);
    at::Tensor mean = h[i].narrow(0, tb, te - tb).mean(0);  // [H]
    at::Tensor last = h[i][te - 1];                         // [H]
    (*out)[idx] = ResponseVector(options.pooling == Pooling::kMean ? mean : last, options, hidden);
    if (keep) r.shared.store->Put(EntryFromBatch(keys[idx], p, cache, i, mean, last));
  }
}

}  // namespace

std::vector<std::vector<float>> Runner::Embed(const std::vector<EncodedPrompt>& prompts,
                                              const EmbedOptions& options, EmbedStore store,
                                              const std::vector<std::string>& store_ids) {
  c10::InferenceMode guard;
  front_.ValidateEmbed(prompts, options, store, store_ids);
  const FrontEnd::Impl& f = impl_->shared;
  const int64_t hidden = f.config.hidden_size;
  std::vector<std::vector<float>> out(prompts.size());
  std::vector<DocKey> keys(prompts.size());
  std::vector<size_t> todo;  // prompts that need a forward pass
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (store == EmbedStore::kNone) {
      todo.push_back(i);
      continue;
    }
    keys[i] = f.store->MakeKey(f.prompt_template.name, KvSource::kEmbed, prompts[i].ids);
    auto entry = f.store->Get(keys[i]);
    const std::vector<float>* pooled =
        entry ? (options.pooling == Pooling::kMean ? &entry->mean : &entry->last) : nullptr;
    if (pooled != nullptr && static_cast<int64_t>(pooled->size()) == hidden &&
        entry->text_begin == prompts[i].text_begin && entry->text_end == prompts[i].text_end) {
      out[i] = ResponseVector(at::tensor(*pooled, at::kFloat), options, hidden);
    } else {
      todo.push_back(i);
    }
    if (i < store_ids.size() && !store_ids[i].empty()) {
      f.store->SetAlias(store_ids[i], {keys[i], KvSource::kEmbed, prompts[i].ids,
                                       prompts[i].text_begin, prompts[i].text_end});
    }
  }
  // Longest first, so each batch pads to its first member.
  std::vector<size_t> order = todo;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return prompts[a].ids.size() > prompts[b].ids.size();
  });
  size_t start = 0;
  while (start < order.size()) {
    const int64_t t = static_cast<int64_t>(prompts[order[start]].ids.size());
    size_t end = start + 1;
    while (end < order.size() &&
           static_cast<int64_t>(end - start + 1) * t <= f.options.max_batch_tokens) {
      ++end;
    }
    EmbedBatch(*impl_, prompts, order, start, end, options, store == EmbedStore::kKeep, keys, &out);
    start = end;
  }
  return out;
}

std::unique_ptr<Sequence> Runner::StartGeneration(std::vector<int32_t> prompt_ids,
                                                  const SamplingParams& params,
                                                  TextCallback on_text,
                                                  std::vector<ResolvedDocument> documents,
                                                  DocPositions positions) {
  auto seq = std::make_unique<Sequence>(
      GenerateRequest{std::move(prompt_ids), params, std::move(documents), positions},
      std::move(on_text));
  Start(*seq);
  return seq;
}

std::vector<bool> Runner::StepAll(const std::vector<Sequence*>& sequences,
                                  std::vector<std::exception_ptr>* errors) {
  return StepSequences(*impl_, sequences, errors);
}

GenerateResult Runner::Generate(std::vector<int32_t> prompt_ids, const SamplingParams& params,
                                TextCallback on_text, std::vector<ResolvedDocument> documents,
                                DocPositions positions) {
  auto seq = StartGeneration(std::move(prompt_ids), params, std::move(on_text),
                             std::move(documents), positions);
  while (seq->Step()) {
  }
  return seq->result();
}

}  // namespace gritserve
