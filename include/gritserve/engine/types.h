// What the engine takes and gives: load options, embedding and generation
// requests, results. Torch-free, so that server, CLI and benchmarks include it
// cheaply.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gritserve/cache/doc_types.h"

namespace gritserve {

struct EngineOptions {
  std::string model_dir;
  std::string template_path;   // empty: the built-in default for the tokenizer
  int threads = 0;             // 0: all cores
  std::string device = "cpu";  // "cpu" or "cuda[:N]"
  // auto: on CPU bfloat16 matrix products where the CPU has them natively, else
  // float32 (AutoCpuDtype); bfloat16 on CUDA. Or float32|bfloat16|float16.
  std::string dtype = "auto";
  // bf16: the weights as the checkpoint and dtype give them (a bfloat16
  // checkpoint's matrices kept in bfloat16, exact); q8, q4: linear layers and
  // the LM head quantized at load in blocks of 32 (CPU, float32 activations).
  std::string weights = "bf16";
  int64_t max_batch_tokens = 8192;  // padded tokens per embedding forward pass
  // Working memory one job may take by its estimate (FrontEnd::EmbedJobBytes,
  // GenerateJobBytes); 0: no fixed cap. Either way a job is refused when its
  // estimate exceeds the memory free when it is about to run.
  int64_t max_job_bytes = 0;
  // Document KV store.
  int64_t cache_bytes = 1LL << 30;
  std::string cache_dir;                 // empty: memory only
  int64_t cache_disk_bytes = 8LL << 30;  // entry and id files in cache_dir (LRU eviction past it)
  std::string cache_dtype = "float32";   // float32, float16 or bfloat16 storage
  // A Redis tier shared by servers (redis://[[user]:password@]host[:port][/db]); empty: none.
  std::string cache_redis;
  std::string cache_redis_prefix = "gritserve:";  // the keys of this deployment
  int cache_redis_timeout_ms = 500;               // connect, and each send or receive
};

enum class Pooling { kMean, kLast };

struct EmbedOptions {
  std::string instruction;
  Pooling pooling = Pooling::kMean;
  int64_t layer = -1;  // early exit after this many layers (-1: all); the final norm still applies
  bool normalize = true;   // L2-normalise (after truncation to `dimensions`)
  int64_t dimensions = 0;  // keep the first N dimensions (Matryoshka); 0: all
  bool raw = false;        // no template: pool over every token of the text as given
  // Special tokens spelled in the instruction or text become control tokens;
  // otherwise they stay plain text inside the template (raw text always parses them).
  bool parse_special = false;
};

// How an embedding request uses the document KV store.
enum class EmbedStore {
  kNone,   // compute, keep nothing
  kReuse,  // take pooled vectors of inputs already in the store, compute the rest
  kKeep,   // kReuse, and keep every input's K/V (from the same forward pass) in the store
};

// A document to place before a generation's prompt: a cached id or a text.
struct DocumentRef {
  std::string id;              // client id given to /embed
  std::string text;            // used when id is empty
  std::vector<int32_t> ids;    // token ids, used as given when id and text are empty
  bool parse_special = false;  // special tokens spelled in `text` become control tokens
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

// One generation as a client asks for it: the prompt's token ids, how to
// sample, and the documents whose K/V goes before the prompt.
struct GenerateRequest {
  std::vector<int32_t> prompt;
  SamplingParams params;
  std::vector<ResolvedDocument> documents;
  DocPositions positions = DocPositions::kSequential;
};

// Receives text as it becomes final (never part of a possible stop string, never
// an incomplete UTF-8 sequence). Returning false cancels the generation.
using TextCallback = std::function<bool(const std::string& piece)>;

}  // namespace gritserve
