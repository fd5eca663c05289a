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

// The template's own text is encoded with special tokens parsed; the values
// substituted into it ({instruction}, {text}, {prompt}, {content}) are literal
// unless `parse_special`: a special token spelled in them stays plain text, so
// a client cannot forge the template's markup. The whole prompt is still
// tokenized as one string. An embedding prompt is prefix + {text}, as GritLM's
// own code does; text_begin is where the prefix's own tokens end. A leading
// "<s>" of the template that the vocabulary lacks becomes the tokenizer's BOS,
// or nothing when it has none (Qwen2).
EncodedPrompt EncodeEmbedPrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::string& instruction, const std::string& text,
                                bool parse_special = false);
std::vector<int32_t> EncodeGeneratePrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                          const std::string& prompt, bool parse_special = false);

struct ChatMessage {
  std::string role;  // system | user | assistant; anything else is Unprocessable
  std::string content;
};
// Ends with the generation prompt. The template's default_system is template text.
std::vector<int32_t> EncodeChat(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::vector<ChatMessage>& messages,
                                bool parse_special = false);

// ChatML when the vocabulary has "<|im_start|>", else GritLM.
PromptTemplate DefaultTemplateFor(const Tokenizer& tok);

}  // namespace gritserve
