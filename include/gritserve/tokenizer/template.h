// Prompt templates (GritLM convention by default), loaded from configs/*.json, and the
// encoders that turn embed / generate / chat requests into token ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve {

struct PromptTemplate {
  std::string name;
  // Prefix before the text when an instruction is given / when none is.
  std::string embed_instruction = "<s><|user|>\n{instruction}\n<|embed|>\n";
  std::string embed_plain = "<s><|embed|>\n";
  std::string generate = "<s><|user|>\n{prompt}\n<|assistant|>\n";
  // Chat: per-role wrappers around {content}; the generation prompt ends the chat.
  // An empty wrapper means the bare content.
  std::string chat_system, chat_user, chat_assistant, chat_generation_prompt;
  // Text before the first message (e.g. "<s>" for GritLM); empty for ChatML.
  std::string chat_begin;
  std::string default_system;       // used when a chat has no system message
  std::string kv_source = "embed";  // "embed" (GritLM) or "causal"
  std::vector<std::string> stop;    // extra stop strings, e.g. "<|im_end|>"

  // Keys are the field names; "name" is required, the rest default as above. Throws
  // LoadError naming a missing, unknown or ill-typed key.
  static PromptTemplate FromJsonFile(const std::string& path);
  static PromptTemplate FromJsonText(const std::string& text);
  static PromptTemplate BuiltinGritLM();
  static PromptTemplate BuiltinChatML();
  static PromptTemplate BuiltinPlain();
};

// [text_begin, text_end) are the {text} tokens (the span to pool over).
struct EncodedPrompt {
  std::vector<int32_t> ids;
  size_t text_begin = 0;
  size_t text_end = 0;
};

// Template text is encoded with parse_special=true after textual substitution of
// {instruction} / {prompt} / {content}. An embedding prompt is prefix + {text}
// encoded as one string, as GritLM's own code does; text_begin is where the
// prefix's own tokens end. A leading "<s>" the vocabulary lacks becomes the
// tokenizer's BOS, or nothing when it has none (Qwen2).
EncodedPrompt EncodeEmbedPrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::string& instruction, const std::string& text);
std::vector<int32_t> EncodeGeneratePrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                          const std::string& prompt);

struct ChatMessage {
  std::string role;  // system | user | assistant; anything else is Unprocessable
  std::string content;
};
// Ends with the generation prompt.
std::vector<int32_t> EncodeChat(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::vector<ChatMessage>& messages);

// ChatML when the vocabulary has "<|im_start|>", else GritLM.
PromptTemplate DefaultTemplateFor(const Tokenizer& tok);

}  // namespace gritserve
