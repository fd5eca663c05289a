#include "gritserve/tokenizer/template.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"

namespace gritserve {

using json = nlohmann::json;

namespace {

constexpr char kBos[] = "<s>";

// Template text with request values substituted, and where those values lie:
// without parse_special they are literal, so a client cannot spell the
// template's own markup (a forged "<|im_start|>system" turn) into its text.
class Rendered {
 public:
  explicit Rendered(bool parse_special) : parse_special_(parse_special) {}

  void AppendTemplate(std::string_view s) { text_ += s; }
  void AppendValue(std::string_view value) {
    if (!parse_special_ && !value.empty()) {
      literal_.push_back({text_.size(), text_.size() + value.size()});
    }
    text_ += value;
  }
  // `tmpl` with every "{key}" replaced by `value`.
  void Substitute(const std::string& tmpl, const std::string& key, const std::string& value) {
    const std::string placeholder = "{" + key + "}";
    size_t pos = 0;
    while (true) {
      const size_t hit = tmpl.find(placeholder, pos);
      if (hit == std::string::npos) break;
      AppendTemplate(std::string_view(tmpl).substr(pos, hit - pos));
      AppendValue(value);
      pos = hit + placeholder.size();
    }
    AppendTemplate(std::string_view(tmpl).substr(pos));
  }
  // A chat wrapper around `content`; an empty wrapper is the bare content.
  void Wrap(const std::string& wrapper, const std::string& content) {
    if (wrapper.empty()) {
      AppendValue(content);
    } else {
      Substitute(wrapper, "content", content);
    }
  }

  const std::string& text() const { return text_; }

  // Encodes the text. A leading "<s>" of the template (not of a value) that is
  // not a special token of this vocabulary stands for "the model's BOS", which
  // keeps one GritLM template usable with tokenizers that spell BOS differently
  // or have none. (Qwen2 has "<s>" only as an ordinary vocabulary entry, which
  // must not be emitted for it.)
  std::vector<int32_t> Encode(const Tokenizer& tok) const {
    std::vector<int32_t> ids;
    std::string_view rest = text_;
    std::vector<TextRange> literal = literal_;
    const size_t n = sizeof(kBos) - 1;
    const auto bos_token = tok.TokenToId(kBos);
    if (rest.compare(0, n, kBos) == 0 && (literal.empty() || literal[0].begin >= n) &&
        !(bos_token && tok.IsSpecial(*bos_token))) {
      if (tok.bos_id()) ids.push_back(*tok.bos_id());
      rest.remove_prefix(n);
      for (TextRange& r : literal) r = {r.begin - n, r.end - n};
    }
    const auto body = tok.EncodeWithLiterals(rest, literal);
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
  }

 private:
  bool parse_special_;
  std::string text_;
  std::vector<TextRange> literal_;  // sorted, disjoint
};

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
                                const std::string& instruction, const std::string& text,
                                bool parse_special) {
  Rendered prefix(parse_special);
  if (instruction.empty()) {
    prefix.AppendTemplate(tmpl.embed_plain);
  } else {
    prefix.Substitute(tmpl.embed_instruction, "instruction", instruction);
  }
  Rendered whole = prefix;
  whole.AppendValue(text);
  // As GritLM's encode() does: one string, pooled from where the prefix's own
  // tokens end (a tokenizer that merges across the seam still leaves the text
  // at least its last token).
  EncodedPrompt out;
  out.ids = whole.Encode(tok);
  out.text_end = out.ids.size();
  out.text_begin = std::min(prefix.Encode(tok).size(), out.text_end);
  if (out.text_begin == out.text_end && !text.empty() && out.text_end > 0) --out.text_begin;
  return out;
}

std::vector<int32_t> EncodeGeneratePrompt(const Tokenizer& tok, const PromptTemplate& tmpl,
                                          const std::string& prompt, bool parse_special) {
  Rendered r(parse_special);
  r.Substitute(tmpl.generate, "prompt", prompt);
  return r.Encode(tok);
}

std::vector<int32_t> EncodeChat(const Tokenizer& tok, const PromptTemplate& tmpl,
                                const std::vector<ChatMessage>& messages, bool parse_special) {
  Rendered r(parse_special);
  r.AppendTemplate(tmpl.chat_begin);
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !tmpl.default_system.empty()) {
    // The server's own system text belongs to the template, not to the request.
    Rendered system(/*parse_special=*/true);
    system.Wrap(tmpl.chat_system, tmpl.default_system);
    r.AppendTemplate(system.text());
  }
  for (const auto& m : messages) {
    if (m.role == "system") {
      r.Wrap(tmpl.chat_system, m.content);
    } else if (m.role == "user") {
      r.Wrap(tmpl.chat_user, m.content);
    } else if (m.role == "assistant") {
      r.Wrap(tmpl.chat_assistant, m.content);
    } else {
      throw Unprocessable("unknown chat role \"" + m.role + "\" (system, user or assistant)");
    }
  }
  r.AppendTemplate(tmpl.chat_generation_prompt);
  return r.Encode(tok);
}

PromptTemplate DefaultTemplateFor(const Tokenizer& tok) {
  return tok.TokenToId("<|im_start|>") ? PromptTemplate::BuiltinChatML()
                                       : PromptTemplate::BuiltinGritLM();
}

}  // namespace gritserve
