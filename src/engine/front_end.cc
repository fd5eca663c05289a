// The engine's thread-safe front end: tokenizing, validating, and the
// document store's index (documents.cc resolves documents).
#include <algorithm>

#include "engine_impl.h"
#include "gritserve/common/allocator.h"
#include "gritserve/common/error.h"
#include "gritserve/common/memory_info.h"

namespace gritserve {
namespace {

// Jobs estimated below this always run: the memory check reads /proc, and a
// small job's estimate is within the slack every process needs anyway.
constexpr int64_t kAlwaysFitsBytes = int64_t{64} << 20;
// Prompt tokens per prefill pass of a generation (sequence.cc feeds long
// prompts in chunks of this size).
constexpr int64_t kPrefillChunk = 256;

std::string Mib(int64_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

// Refuses a job whose estimate is over the cap (413) or over the memory free
// now (429): memory the OS has available plus what this process has freed
// and keeps for reuse.
void CheckJobBytes(int64_t bytes, int64_t cap) {
  if (cap > 0 && bytes > cap) {
    throw Error(ErrorKind::kTooLarge, "this request needs about " + Mib(bytes) +
                                          " of working memory, over the " + Mib(cap) +
                                          " allowed per request; send fewer or shorter inputs");
  }
  if (bytes < kAlwaysFitsBytes) return;
  if (const auto available = AvailableMemoryBytes()) {
    const int64_t free_now = *available + FreeHeapBytes();
    if (bytes > free_now) {
      throw Error(ErrorKind::kQueueFull, "this request needs about " + Mib(bytes) +
                                             " of working memory and " + Mib(free_now) +
                                             " are free now; retry later or send fewer or "
                                             "shorter inputs");
    }
  }
}

}  // namespace

FrontEnd::FrontEnd(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FrontEnd::~FrontEnd() = default;

const ModelConfig& FrontEnd::config() const { return impl_->config; }
const Tokenizer& FrontEnd::tokenizer() const { return *impl_->tokenizer; }
const PromptTemplate& FrontEnd::prompt_template() const { return impl_->prompt_template; }
std::string FrontEnd::device_name() const { return impl_->device_name; }
std::string FrontEnd::dtype_name() const { return impl_->dtype_name; }
int64_t FrontEnd::max_context() const { return impl_->config.max_position_embeddings; }

EncodedPrompt FrontEnd::EncodeEmbed(const std::string& text, const EmbedOptions& options) const {
  if (options.raw) return EncodeEmbedIds(impl_->tokenizer->Encode(text));
  return EncodeEmbedPrompt(*impl_->tokenizer, impl_->prompt_template, options.instruction, text,
                           options.parse_special);
}

EncodedPrompt FrontEnd::EncodeEmbedIds(std::vector<int32_t> ids) const {
  EncodedPrompt p;
  p.ids = std::move(ids);
  p.text_begin = 0;
  p.text_end = p.ids.size();
  return p;
}

std::vector<int32_t> FrontEnd::EncodeGenerate(const std::string& prompt, bool raw,
                                              bool parse_special) const {
  if (raw) return impl_->tokenizer->Encode(prompt);
  return EncodeGeneratePrompt(*impl_->tokenizer, impl_->prompt_template, prompt, parse_special);
}

std::vector<int32_t> FrontEnd::EncodeChat(const std::vector<ChatMessage>& messages,
                                          bool parse_special) const {
  return gritserve::EncodeChat(*impl_->tokenizer, impl_->prompt_template, messages, parse_special);
}

void FrontEnd::ValidateEmbed(const std::vector<EncodedPrompt>& prompts, const EmbedOptions& options,
                             EmbedStore store, const std::vector<std::string>& ids) const {
  const ModelConfig& c = impl_->config;
  if (options.dimensions < 0 || options.dimensions > c.hidden_size) {
    throw Unprocessable("dimensions must be between 1 and " + std::to_string(c.hidden_size));
  }
  if (options.layer == 0 || options.layer > c.num_hidden_layers) {
    throw Unprocessable("layer must be between 1 and " + std::to_string(c.num_hidden_layers));
  }
  for (const auto& p : prompts) {
    if (p.text_end <= p.text_begin || p.text_end > p.ids.size()) {
      throw Unprocessable("an input has no tokens to embed");
    }
    if (static_cast<int64_t>(p.ids.size()) > max_context()) {
      throw Unprocessable("an input has " + std::to_string(p.ids.size()) +
                          " tokens; the model's context is " + std::to_string(max_context()));
    }
  }
  if (store != EmbedStore::kNone && options.layer > 0 && options.layer != c.num_hidden_layers) {
    throw Unprocessable("'layer' cannot be combined with the document cache");
  }
  if (!ids.empty() && ids.size() != prompts.size()) {
    throw Unprocessable("'ids' must name every input");
  }
  CheckJobBytes(EmbedJobBytes(prompts, store), impl_->options.max_job_bytes);
}

int64_t FrontEnd::EmbedJobBytes(const std::vector<EncodedPrompt>& prompts, EmbedStore store) const {
  const ModelConfig& c = impl_->config;
  int64_t longest = 1, total = 0;
  for (const auto& p : prompts) {
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.ids.size()));
    total += static_cast<int64_t>(p.ids.size());
  }
  // Runner::Embed pads batches to their longest member under max_batch_tokens.
  const int64_t rows = std::clamp<int64_t>(impl_->options.max_batch_tokens / longest, 1,
                                           std::max<size_t>(prompts.size(), 1));
  int64_t bytes = Decoder::ForwardBytes(c, rows, longest, 0);
  if (store == EmbedStore::kKeep) {
    // The batch's cache, and the entries cut from it (held by the store,
    // within its own budget).
    bytes += Decoder::KvBytes(c, rows * longest) +
             std::min(Decoder::KvBytes(c, total), impl_->options.cache_bytes);
  }
  return bytes;
}

int64_t FrontEnd::GenerateJobBytes(const GenerateRequest& request) const {
  const ModelConfig& c = impl_->config;
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  int64_t docs = 0, longest_doc = 0;
  for (const auto& d : request.documents) {
    docs += static_cast<int64_t>(d.ids.size());
    longest_doc = std::max<int64_t>(longest_doc, static_cast<int64_t>(d.ids.size()));
  }
  const int64_t tokens =
      std::min(docs + prompt + std::max<int64_t>(request.params.max_tokens, 0), max_context());
  int64_t bytes = Decoder::KvBytes(c, tokens) +
                  Decoder::ForwardBytes(c, 1, std::min(prompt, kPrefillChunk), docs + prompt);
  if (longest_doc > 0) {
    // A document not in the store yet: its own pass, and its entry.
    bytes += Decoder::ForwardBytes(c, 1, longest_doc, 0) + 2 * Decoder::KvBytes(c, longest_doc);
  }
  return bytes;
}

void FrontEnd::ValidateGenerate(const GenerateRequest& request) const {
  const std::vector<int32_t>& prompt = request.prompt;
  if (prompt.empty()) throw Unprocessable("the prompt has no tokens");
  const int64_t ctx = max_context();
  int64_t total = static_cast<int64_t>(prompt.size());
  for (const auto& d : request.documents) total += static_cast<int64_t>(d.ids.size());
  if (total >= ctx) {
    throw Unprocessable("the prompt (with its documents) has " + std::to_string(total) +
                        " tokens; the model's context is " + std::to_string(ctx));
  }
  for (int32_t id : prompt) {
    if (id < 0 || id >= impl_->config.vocab_size) {
      throw Unprocessable("token id " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  CheckJobBytes(GenerateJobBytes(request), impl_->options.max_job_bytes);
}

}  // namespace gritserve
