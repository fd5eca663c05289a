// The engine's thread-safe front end: tokenizing, validating, and the
// document store's index (documents.cc resolves documents).
#include "engine_impl.h"
#include "gritserve/common/error.h"

namespace gritserve {

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
}

}  // namespace gritserve
