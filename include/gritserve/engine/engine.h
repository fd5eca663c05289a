// Library-level API: one loaded model with its tokenizer and prompt template.
// Tokenisation entry points are const and thread-safe (HTTP threads call them);
// everything that runs the model must be called from one inference thread.
// Torch-free so that the server and CLI include it cheaply.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gritserve/cache/doc_types.h"
#include "gritserve/model/config.h"
#include "gritserve/tokenizer/template.h"
#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve {

struct EngineOptions {
  std::string model_dir;
  std::string template_path;   // empty: the built-in default for the tokenizer
  int threads = 0;             // 0: all cores
  std::string device = "cpu";  // "cpu" or "cuda[:N]"
  // auto: float32 on CPU when its weights fit in memory (else bfloat16 matrix
  // products; see AutoCpuDtype), bfloat16 on CUDA; or float32|bfloat16|float16.
  std::string dtype = "auto";
  int64_t max_batch_tokens = 8192;  // padded tokens per embedding forward pass
  // Document KV store.
  int64_t cache_bytes = 1LL << 30;
  std::string cache_dir;                // empty: memory only
  std::string cache_dtype = "float32";  // float32, float16 or bfloat16 storage
};

enum class Pooling { kMean, kLast };

struct EmbedOptions {
  std::string instruction;
  Pooling pooling = Pooling::kMean;
  int64_t layer = -1;  // early exit after this many layers (-1: all); the final norm still applies
  bool normalize = true;   // L2-normalise (after truncation to `dimensions`)
  int64_t dimensions = 0;  // keep the first N dimensions (Matryoshka); 0: all
  bool raw = false;        // no template: pool over every token of the text as given
};

// How an embedding request uses the document KV store.
enum class EmbedStore {
  kNone,   // compute, keep nothing
  kReuse,  // take pooled vectors of inputs already in the store, compute the rest
  kKeep,   // kReuse, and keep every input's K/V (from the same forward pass) in the store
};

// A document to place before a generation's prompt: a cached id or a text.
struct DocumentRef {
  std::string id;            // client id given to /embed
  std::string text;          // used when id is empty
  std::vector<int32_t> ids;  // token ids, used as given when id and text are empty
};
enum class DocPositions {
  kSequential,  // documents one after another, then the prompt
  kComposite,   // every document from position 0; the prompt after all of them (as GritLM did)
};
// A document resolved to its store key and the tokens whose K/V the generation
// needs: the same record a client id names in the store.
using ResolvedDocument = DocAlias;

struct SamplingParams {
  int64_t max_tokens = 16;
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool ignore_eos = false;
  bool capture_logits = false;  // keep each step's logits in the result (tests, debugging)
};

struct GenerateResult {
  std::string text;
  std::vector<int32_t> tokens;
  std::string finish_reason;  // "stop" (EOS or stop string), "length", "cancelled"
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t completion_tokens = 0;
  double prefill_ms = 0, decode_ms = 0, ttft_ms = 0;
  double documents_ms = 0;  // part of prefill: fetching/computing and placing document K/V
  std::vector<std::vector<float>> step_logits;  // with capture_logits: [steps][V]
};

// Receives text as it becomes final (never part of a possible stop string, never
// an incomplete UTF-8 sequence). Returning false cancels the generation.
using TextCallback = std::function<bool(const std::string& piece)>;

class Generation;

class Engine {
 public:
  static std::unique_ptr<Engine> Load(const EngineOptions& options);
  ~Engine();

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  const PromptTemplate& prompt_template() const;
  std::string device_name() const;
  std::string dtype_name() const;
  int64_t max_context() const;

  // --- thread-safe, tokenizer only ---
  EncodedPrompt EncodeEmbed(const std::string& text, const EmbedOptions& options) const;
  // Already-tokenised input: pooled over every token (the template is not applied).
  EncodedPrompt EncodeEmbedIds(std::vector<int32_t> ids) const;
  std::vector<int32_t> EncodeGenerate(const std::string& prompt, bool raw) const;
  std::vector<int32_t> EncodeChat(const std::vector<ChatMessage>& messages) const;

  // The template's default: GritLM-style templates reuse the embedding pass.
  KvSource default_kv_source() const;
  // Resolves documents for a generation (thread-safe): ids through the store's
  // aliases (NotFound naming an unknown id), texts through the tokenizer.
  std::vector<ResolvedDocument> ResolveDocuments(const std::vector<DocumentRef>& docs,
                                                 KvSource source) const;
  // The prompt of a stored id, for reusing its embedding (NotFound if unknown).
  EncodedPrompt StoredPrompt(const std::string& id) const;
  DocKvStats document_stats() const;
  bool RemoveDocument(const std::string& id);

  // --- inference thread only ---
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

  // Starts a causal generation; the caller steps it (so a scheduler can
  // interleave other work between tokens).
  // With documents, their K/V (from the store, or computed and stored) is
  // placed before the prompt and only the prompt is prefilled.
  std::unique_ptr<Generation> StartGeneration(std::vector<int32_t> prompt_ids,
                                              const SamplingParams& params,
                                              TextCallback on_text = nullptr,
                                              std::vector<ResolvedDocument> documents = {},
                                              DocPositions positions = DocPositions::kSequential);
  // One step of each of several generations (from StartGeneration), as the
  // scheduler runs concurrent requests: those past their prefill decode in one
  // shared forward pass (each weight read once for all of them), the others
  // step on their own. Returns per generation whether it continues; `errors`
  // gets what each failed with (nullptr where it did not), the others go on.
  std::vector<bool> StepAll(const std::vector<Generation*>& gens,
                            std::vector<std::exception_ptr>* errors);
  // Runs a generation to the end.
  GenerateResult Generate(std::vector<int32_t> prompt_ids, const SamplingParams& params,
                          TextCallback on_text = nullptr,
                          std::vector<ResolvedDocument> documents = {},
                          DocPositions positions = DocPositions::kSequential);

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What `dtype: auto` runs a model of `parameters` in on a CPU: "float32" when
// its float32 weights, with a margin for activations and caches, fit in
// `available_bytes` (unknown: assumed to fit), else "bfloat16" where the CPU
// has native bfloat16 products (half the bytes, float32 everywhere else).
std::string AutoCpuDtype(int64_t parameters, std::optional<int64_t> available_bytes,
                         bool bf16_products);

// One sequence being generated; owned and stepped by the inference thread.
class Generation {
 public:
  virtual ~Generation() = default;
  // Prefills on the first call, then produces one token per call. Returns false
  // once finished (the result is then final).
  virtual bool Step() = 0;
  virtual bool finished() const = 0;
  virtual void Cancel() = 0;
  virtual const GenerateResult& result() const = 0;
};

}  // namespace gritserve
