// Engine internals shared by the engine's translation units (tensor code only).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <unordered_set>

#include "gritserve/cache/doc_kv_store.h"
#include "gritserve/cache/kv_cache.h"
#include "gritserve/engine/engine.h"
#include "gritserve/engine/sampler.h"
#include "gritserve/model/decoder.h"

namespace gritserve {

// What the front end holds and the runner reads: everything but the model.
struct FrontEnd::Impl {
  EngineOptions options;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  PromptTemplate prompt_template;
  // Token ids that end a generation: the model's EOS ids, the tokenizer's, and
  // template stop strings that are single tokens (e.g. ChatML's <|im_end|>).
  std::unordered_set<int32_t> eos_ids;
  // Ids >= this are padding rows of the embedding matrix with no token text;
  // sampling never picks them.
  int64_t sampleable_vocab = 0;
  std::string device_name, dtype_name;  // of the loaded model
  std::unique_ptr<DocKvStore> store;    // thread-safe
};

struct Runner::Impl {
  const FrontEnd& front;
  const FrontEnd::Impl& shared;  // front's state
  std::unique_ptr<Decoder> decoder;
};

// Document K/V for a generation: each document's entry (from the store, or
// computed and stored), rotated to its place, in a fresh cache of batch 1 with
// room for `reserve_after` more tokens (the prompt and the answer).
KvCache AssembleDocuments(const Runner::Impl& runner, const std::vector<ResolvedDocument>& docs,
                          DocPositions positions, int64_t reserve_after);
// Runs one document through the model and returns its entry (not yet stored).
DocKvEntry ComputeEntry(const Runner::Impl& runner, const ResolvedDocument& doc);
// A hash of config.json and the weight files' headers: part of every store key,
// so entries never cross models.
std::string ModelFingerprint(const std::string& model_dir);

// Runner::StepAll's work.
std::vector<bool> StepSequences(const Runner::Impl& runner, const std::vector<Sequence*>& seqs,
                                std::vector<std::exception_ptr>* errors);

}  // namespace gritserve
