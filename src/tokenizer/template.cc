#include "gritserve/tokenizer/template.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"

namespace gritserve {

using json = nlohmann::json;

namespace {

constexpr char kBos[] = "<s>";

std::string Substitute(const std::string& tmpl, const std::string& key, const std::string& value) {
  const std::string placeholder = "{" + key + "}";
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = tmpl.find(placeholder, pos);
    if (hit == std::string::npos) break;
    out.append(tmpl, pos, hit - pos);
    out += value;
    pos = hit + placeholder.size();
  }
  out.append(tmpl, pos, std::string::npos);
  return out;
}

// Encodes template text. A leading "<s>" that is not a special token of this
// vocabulary stands for "the model's BOS", which keeps one GritLM template usable with
// tokenizers that spell BOS differently or have none. (Qwen2 has "<s>" only as an
// ordinary vocabulary entry, which must not be emitted for it.)
std::vector<int32_t> EncodeTemplateText(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  std::string_view rest = text;
  const auto bos_token = tok.TokenToId(kBos);
  if (rest.compare(0, 3, kBos) == 0 && !(bos_token && tok.IsSpecial(*bos_token))) {
    if (tok.bos_id()) ids.push_back(*tok.bos_id());
    rest.remove_prefix(3);
  }
  const auto body = tok.Encode(rest, /*parse_special=*/true);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::string Wrap(const std::string& wrapper, const std::string& content) {
  return wrapper.empty() ? content : Substitute(wrapper, "content", content);
}

// A string-valued key of a template file; a non-empty value must contain `placeholder`.
struct TemplateField {
  const char* key;
  std::string PromptTemplate::*slot;
  const char* placeholder;
};

const TemplateField kTemplateFields[] = {
    {"name", &PromptTemplate::name, nullptr},
    {"embed_instruction", &PromptTemplate::embed_instruction, "{instruction}"},
    {"embed_plain", &PromptTemplate::embed_plain, nullptr},
    {"generate", &PromptTemplate::generate, "{prompt}"},
    {"chat_system", &PromptTemplate::chat_system, "{content}"},
    {"chat_user", &PromptTemplate::chat_user, "{content}"},
    {"chat_assistant", &PromptTemplate::chat_assistant, "{content}"},
    {"chat_generation_prompt", &PromptTemplate::chat_generation_prompt, nullptr},
    {"chat_begin", &PromptTemplate::chat_begin, nullptr},
    {"default_system", &PromptTemplate::default_system, nullptr},
    {"kv_source", &PromptTemplate::kv_source, nullptr},
};

const TemplateField* FindTemplateField(const std::string& key) {
  for (const auto& field : kTemplateFields) {
    if (key == field.key) return &field;
  }
  return nullptr;
}

// "stop" must be a list: unlike JsonFields::StringList, a bare string is refused.
std::vector<std::string> StopList(const JsonFields& f, const json& stop) {
  if (!stop.is_array()) throw f.TypeError("stop", "a list of strings");
  std::vector<std::string> out;
  for (const auto& s : stop) {
    if (!s.is_string()) throw f.TypeError("stop", "a list of strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

}  // namespace

PromptTemplate PromptTemplate::BuiltinGritLM() {
  PromptTemplate t;
  t.name = "gritlm";
  t.chat_begin = "<s>";
  t.chat_system = "<|system|>\n{content}\n";
  t.chat_user = "<|user|>\n{content}\n";
  t.chat_assistant = "<|assistant|>\n{content}</s>\n";
  t.chat_generation_prompt = "<|assistant|>\n";
  t.kv_source = "embed";
  t.stop = {"</s>"};
  return t;
}

PromptTemplate PromptTemplate::BuiltinChatML() {
  PromptTemplate t;
  t.name = "chatml";
  t.embed_instruction = "<|user|>\n{instruction}\n<|embed|>\n";
  t.embed_plain = "<|embed|>\n";
  t.generate = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n";
  t.chat_system = "<|im_start|>system\n{content}<|im_end|>\n";
  t.chat_user = "<|im_start|>user\n{content}<|im_end|>\n";
  t.chat_assistant = "<|im_start|>assistant\n{content}<|im_end|>\n";
  t.chat_generation_prompt = "<|im_start|>assistant\n";
  t.kv_source = "causal";
  t.stop = {"<|im_end|>", "<|endoftext|>"};
  return t;
}

PromptTemplate PromptTemplate::BuiltinPlain() {
  PromptTemplate t;
  t.name = "plain";
  t.embed_instruction = "{instruction}";
  t.embed_plain = "";
  t.generate = "{prompt}";
  // Messages are only separated by newlines: there is no markup to wrap them in.
  t.chat_system = "{content}\n";
  t.chat_user = "{content}\n";
  t.chat_assistant = "{content}\n";
  t.kv_source = "causal";
  return t;
}

PromptTemplate PromptTemplate::FromJsonText(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw LoadError(std::string("prompt template: invalid JSON: ") + e.what());
  }
  if (!j.is_object()) throw LoadError("prompt template: not a JSON object");
  // Not JsonFields::Missing: this message has always quoted the key as "name".
  if (!j.contains("name")) throw LoadError("prompt template: missing key \"name\"");
  const JsonFields f = JsonFields::File(j, "prompt template");
  PromptTemplate t;
  // Every key present is checked, null included: a template has no "none" values.
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (key == "stop") {
      t.stop = StopList(f, *it);
      continue;
    }
    const TemplateField* field = FindTemplateField(key);
    if (field == nullptr) throw LoadError("prompt template: unknown key \"" + key + "\"");
    if (!it->is_string()) throw f.TypeError(field->key, "a string");
    std::string& slot = t.*field->slot;
    slot = it->get<std::string>();
    if (field->placeholder && !slot.empty() && slot.find(field->placeholder) == std::string::npos) {
      throw f.RangeError(field->key, std::string("lacks ") + field->placeholder);
    }
  }
  if (t.name.empty()) throw f.RangeError("name", "is empty");
  if (t.kv_source != "embed" && t.kv_source != "causal") {
    throw f.RangeError("kv_source", "must be \"embed\" or \"causal\", not \"" + t.kv_source + "\"");
  }
  return t;
}

PromptTemplate PromptTemplate::FromJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LoadError("cannot read prompt template " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return FromJsonText(ss.str());
  } catch (const Error& e) {
    throw LoadError(path + ": " + e.what());
  }
}

EncodedPrompt EncodeEmbedPrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::string& instruction, const std::string& text) {
  const std::string prefix = instruction.empty()
                                 ? tmpl.embed_plain
                                 : Substitute(tmpl.embed_instruction, "instruction", instruction);
  // As GritLM's encode() does: one string, pooled from where the prefix's own
  // tokens end (a tokenizer that merges across the seam still leaves the text
  // at least its last token).
  EncodedPrompt out;
  out.ids = EncodeTemplateText(tok, prefix + text);
  out.text_end = out.ids.size();
  out.text_begin = std::min(EncodeTemplateText(tok, prefix).size(), out.text_end);
  if (out.text_begin == out.text_end && !text.empty() && out.text_end > 0) --out.text_begin;
  return out;
}

std::vector<int32_t> EncodeGeneratePrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                          const std::string& prompt) {
  return EncodeTemplateText(tok, Substitute(tmpl.generate, "prompt", prompt));
}

std::vector<int32_t> EncodeChat(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::vector<ChatMessage>& messages) {
  std::string text = tmpl.chat_begin;
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !tmpl.default_system.empty()) {
    text += Wrap(tmpl.chat_system, tmpl.default_system);
  }
  for (const auto& m : messages) {
    if (m.role == "system") {
      text += Wrap(tmpl.chat_system, m.content);
    } else if (m.role == "user") {
      text += Wrap(tmpl.chat_user, m.content);
    } else if (m.role == "assistant") {
      text += Wrap(tmpl.chat_assistant, m.content);
    } else {
      throw Unprocessable("unknown chat role \"" + m.role + "\" (system, user or assistant)");
    }
  }
  text += tmpl.chat_generation_prompt;
  return EncodeTemplateText(tok, text);
}

PromptTemplate DefaultTemplateFor(const Tokenizer& tok) {
  return tok.TokenToId("<|im_start|>") ? PromptTemplate::BuiltinChatML()
                                       : PromptTemplate::BuiltinGritLM();
}

}  // namespace gritserve
