#include "gritserve/tokenizer/tokenizer.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"
#include "gritserve/tokenizer/bpe_tokenizer.h"
#include "gritserve/tokenizer/sentencepiece_tokenizer.h"
#include "gritserve/tokenizer/text_util.h"

namespace gritserve {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LoadError("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// tokenizer_config.json spells a token either as a string or as a serialised
// AddedToken object {"content": ...}; null means "none".
std::optional<std::string> TokenField(const JsonFields& cfg, const char* key) {
  const json* v = cfg.Find(key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  const json* content = cfg.Nested(*v).Find("content");
  if (content != nullptr && content->is_string()) return content->get<std::string>();
  throw cfg.TypeError(key, "a string or an object with a string 'content'");
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::FromDirectory(const std::string& dir) {
  if (!fs::is_directory(dir)) throw LoadError("tokenizer directory not found: " + dir);
  const std::string json_path = dir + "/tokenizer.json";
  const std::string model_path = dir + "/tokenizer.model";
  const bool have_model = fs::exists(model_path);
  if (fs::exists(json_path)) {
    try {
      auto tok = BpeTokenizer::FromJsonText(ReadWholeFile(json_path));
      tok->ApplyConfig(dir);
      return tok;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kLoad || !have_model) {
        throw Error(e.kind(), json_path + ": " + e.what());
      }
      spdlog::warn("{}: {}; using {} instead", json_path, e.what(), model_path);
    }
  }
  if (have_model) {
    auto tok = SentencePieceTokenizer::FromFile(model_path);
    tok->ApplyConfig(dir);
    return tok;
  }
  throw LoadError("no tokenizer.json or tokenizer.model in " + dir);
}

bool Tokenizer::ApplyTokenizerConfig(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  if (!fs::exists(path)) return false;
  json cfg;
  try {
    cfg = json::parse(ReadWholeFile(path));
  } catch (const json::exception& e) {
    throw LoadError(path + ": invalid JSON: " + e.what());
  }
  if (!cfg.is_object()) throw LoadError(path + ": not a JSON object");
  const JsonFields fields = JsonFields::File(cfg, path);
  auto resolve = [&](const char* key, std::optional<int32_t>* slot) {
    const auto name = TokenField(fields, key);
    if (!name) {
      // An explicit null means the model has none (Qwen2's bos_token).
      if (cfg.contains(key)) slot->reset();
      return;
    }
    const auto id = TokenToId(*name);
    if (!id) {
      spdlog::warn("{}: {} '{}' is not in the vocabulary; ignored", path, key, *name);
      return;
    }
    *slot = id;
  };
  resolve("bos_token", &bos_id_);
  resolve("eos_token", &eos_id_);
  resolve("pad_token", &pad_id_);
  // Read leniently, as always: a value that is not a boolean leaves the default.
  const json* add_bos = fields.Find("add_bos_token");
  if (add_bos != nullptr && add_bos->is_boolean()) {
    add_bos_ = add_bos->get<bool>();
    return true;
  }
  return false;
}

namespace {

std::vector<TextRange> AllOrNothing(std::string_view text, bool parse_special) {
  if (parse_special || text.empty()) return {};
  return {TextRange{0, text.size()}};
}

}  // namespace

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  return EncodeWithLiterals(text, AllOrNothing(text, parse_special));
}

std::vector<TokenSpan> Tokenizer::EncodeWithOffsets(std::string_view text,
                                                    bool parse_special) const {
  return EncodeSpans(text, AllOrNothing(text, parse_special), /*want_offsets=*/true);
}

std::vector<int32_t> Tokenizer::EncodeWithLiterals(std::string_view text,
                                                   const std::vector<TextRange>& literal) const {
  const std::vector<TokenSpan> spans = EncodeSpans(text, literal, /*want_offsets=*/false);
  std::vector<int32_t> ids;
  ids.reserve(spans.size());
  for (const auto& s : spans) ids.push_back(s.id);
  return ids;
}

void Tokenizer::AppendDecoded(int32_t id, bool /*at_start*/, std::string* out) const {
  out->append(TokenBytes(id));
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  bool at_start = true;
  for (int32_t id : ids) {
    const bool special = IsSpecial(id);
    if (skip_special && special) continue;
    AppendDecoded(id, at_start, &bytes);
    at_start = at_start && special;
  }
  return tokenizer_internal::SanitizeUtf8(bytes);
}

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special) {}

std::string StreamDecoder::Push(int32_t id) {
  if (skip_special_ && tok_.IsSpecial(id)) return {};
  tok_.AppendDecoded(id, !started_, &pending_);
  started_ = started_ || !tok_.IsSpecial(id);
  const size_t keep = tokenizer_internal::IncompleteUtf8Tail(pending_);
  std::string out = tokenizer_internal::SanitizeUtf8(
      std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out = tokenizer_internal::SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace gritserve
