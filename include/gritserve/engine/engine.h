// Library-level API: one loaded model, in two objects with different threads.
//  - FrontEnd: the tokenizer, prompt template, config and the document store's
//    index; thread-safe, used by HTTP threads to tokenize, validate and
//    resolve documents before anything is queued.
//  - Runner: owns the model; runs embeddings and steps generations, from one
//    inference thread only (the Scheduler's).
// Torch-free so that the server and CLI include it cheaply.
#pragma once

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gritserve/engine/sequence.h"
#include "gritserve/engine/types.h"
#include "gritserve/model/config.h"
#include "gritserve/tokenizer/template.h"
#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve {

class FrontEnd {
 public:
  ~FrontEnd();

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  const PromptTemplate& prompt_template() const;
  std::string device_name() const;
  std::string dtype_name() const;
  int64_t max_context() const;

  EncodedPrompt EncodeEmbed(const std::string& text, const EmbedOptions& options) const;
  // Already-tokenised input: pooled over every token (the template is not applied).
  EncodedPrompt EncodeEmbedIds(std::vector<int32_t> ids) const;
  // Raw prompts are used as given, special tokens included. Through the
  // template, the prompt and the messages' content are literal text unless
  // `parse_special` (see EncodeGeneratePrompt).
  std::vector<int32_t> EncodeGenerate(const std::string& prompt, bool raw,
                                      bool parse_special = false) const;
  std::vector<int32_t> EncodeChat(const std::vector<ChatMessage>& messages,
                                  bool parse_special = false) const;

  // Unprocessable (422) for what the model cannot run: the Runner checks
  // every request with these before it computes anything. A job whose
  // memory estimate (below) is over --max-job-bytes is too large (413); one
  // over what the machine has free at that moment waits for nothing and is
  // refused as a full server is (429).
  void ValidateEmbed(const std::vector<EncodedPrompt>& prompts, const EmbedOptions& options,
                     EmbedStore store, const std::vector<std::string>& ids) const;
  void ValidateGenerate(const GenerateRequest& request) const;

  // The working memory a job is estimated to need at its peak beyond the
  // loaded model: its largest forward pass (Decoder::ForwardBytes) and the
  // keys and values it holds. Linear in its tokens.
  int64_t EmbedJobBytes(const std::vector<EncodedPrompt>& prompts, EmbedStore store) const;
  int64_t GenerateJobBytes(const GenerateRequest& request) const;

  // The template's default: GritLM-style templates reuse the embedding pass.
  KvSource default_kv_source() const;
  // Resolves documents for a generation: ids through the store's aliases
  // (NotFound naming an unknown id), texts through the tokenizer. Entries
  // only the Redis tier holds are fetched into memory here (HTTP threads).
  std::vector<ResolvedDocument> ResolveDocuments(const std::vector<DocumentRef>& docs,
                                                 KvSource source) const;
  // The prompt of a stored id, for reusing its embedding (NotFound if unknown).
  EncodedPrompt StoredPrompt(const std::string& id) const;
  // Entries of embedding prompts that only the Redis tier holds, fetched into
  // memory before an embedding job that may reuse them is queued.
  void PrefetchEmbedded(const std::vector<EncodedPrompt>& prompts) const;
  DocKvStats document_stats() const;
  bool RemoveDocument(const std::string& id);

  struct Impl;
  explicit FrontEnd(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

class Runner {
 public:
  ~Runner();
  const FrontEnd& front() const { return front_; }

  // One vector per prompt; prompts are batched (sorted by length, right padded)
  // under max_batch_tokens. `ids` (with kKeep) names the stored entries; empty
  // strings store without a name.
  std::vector<std::vector<float>> Embed(const std::vector<EncodedPrompt>& prompts,
                                        const EmbedOptions& options,
                                        EmbedStore store = EmbedStore::kNone,
                                        const std::vector<std::string>& ids = {});
  // Convenience: EncodeEmbed + Embed.
  std::vector<std::vector<float>> EmbedTexts(const std::vector<std::string>& texts,
                                             const EmbedOptions& options);

  // Validates the sequence's request and attaches its decode state; the
  // caller then steps it (so a scheduler can interleave other work between
  // tokens). With documents, their K/V (from the store, or computed and
  // stored) is placed before the prompt and only the prompt is prefilled.
  void Start(Sequence& sequence);
  // A new sequence, started.
  std::unique_ptr<Sequence> StartGeneration(std::vector<int32_t> prompt_ids,
                                            const SamplingParams& params,
                                            TextCallback on_text = nullptr,
                                            std::vector<ResolvedDocument> documents = {},
                                            DocPositions positions = DocPositions::kSequential);
  // One step of each of several started sequences, as the scheduler runs
  // concurrent requests: those past their prefill decode in one shared forward
  // pass (each weight read once for all of them), the others step on their
  // own; cancelled ones stop. Returns per sequence whether it continues;
  // `errors` gets what each failed with (nullptr where it did not), the
  // others go on.
  std::vector<bool> StepAll(const std::vector<Sequence*>& sequences,
                            std::vector<std::exception_ptr>* errors);
  // Runs a generation to the end.
  GenerateResult Generate(std::vector<int32_t> prompt_ids, const SamplingParams& params,
                          TextCallback on_text = nullptr,
                          std::vector<ResolvedDocument> documents = {},
                          DocPositions positions = DocPositions::kSequential);

  struct Impl;
  Runner(const FrontEnd& front, std::unique_ptr<Impl> impl);

 private:
  const FrontEnd& front_;
  std::unique_ptr<Impl> impl_;
};

// A loaded model: its front end and its runner.
class Engine {
 public:
  static std::unique_ptr<Engine> Load(const EngineOptions& options);
  ~Engine();

  FrontEnd& front() { return *front_; }
  const FrontEnd& front() const { return *front_; }
  Runner& runner() { return *runner_; }

 private:
  Engine(std::unique_ptr<FrontEnd> front, std::unique_ptr<Runner> runner);
  std::unique_ptr<FrontEnd> front_;
  std::unique_ptr<Runner> runner_;
};

// What `dtype: auto` runs a model in on a CPU: "bfloat16" (bfloat16 matrix
// products, float32 norms, attention and KV cache) where the CPU multiplies
// bfloat16 natively, else "float32". The products then take half the weight
// bytes and run about twice as fast on prompts and embeddings, and their
// results hold q8's quality bounds against float32
// (QuantQuality.Bfloat16ProductsHoldQ8sBoundsOnTheTinyModel, bench_quant_quality).
std::string AutoCpuDtype(bool bf16_products);

}  // namespace gritserve
