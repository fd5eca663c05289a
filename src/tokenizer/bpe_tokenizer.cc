#include "gritserve/tokenizer/bpe_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"

namespace gritserve {

using json = nlohmann::json;
namespace ti = tokenizer_internal;

namespace {

// GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Flags are read leniently: a value that is not a boolean gives the default rather than
// an error (not JsonFields::Bool), so odd but loadable tokenizer.json files still load.
bool LenientBool(const JsonFields& f, const char* key, bool dflt) {
  const json* v = f.Find(key);
  return v != nullptr && v->is_boolean() ? v->get<bool>() : dflt;
}

// Likewise for optional strings (HF writes null for "none"): a non-string is ignored.
std::optional<std::string> LenientString(const JsonFields& f, const char* key) {
  const json* v = f.Find(key);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

// JsonFields::String, except that an explicit null is refused rather than taken as
// absent: for these keys null is a malformed file, not "use the default".
std::optional<std::string> NonNullString(const JsonFields& f, const char* key) {
  if (!f.Has(key) && f.object().contains(key)) throw f.TypeError(key, "a string");
  return f.String(key);
}

// The field, or null when absent; the part parsers below treat null as "none".
const json& FieldOrNull(const JsonFields& f, const char* key) {
  static const json kNull;
  const json* v = f.Find(key);
  return v != nullptr ? *v : kNull;
}

void ParseNormalizer(const json& j, std::vector<ti::NormalForm>* out) {
  if (j.is_null()) return;
  const std::string type = JsonFields::File(j, "normalizer").RequireString("type");
  if (type == "Sequence") {
    for (const auto& n : j.at("normalizers")) ParseNormalizer(n, out);
  } else if (type == "NFC") {
    out->push_back(ti::NormalForm::kNfc);
  } else if (type == "NFKC") {
    out->push_back(ti::NormalForm::kNfkc);
  } else if (type == "NFD") {
    out->push_back(ti::NormalForm::kNfd);
  } else if (type == "NFKD") {
    out->push_back(ti::NormalForm::kNfkd);
  } else {
    throw LoadError("unsupported normalizer type '" + type + "'");
  }
}

bool HasByteLevel(const JsonFields& f, const char* list_key) {
  const std::string type = NonNullString(f, "type").value_or("");
  if (type == "ByteLevel") return true;
  const json* list = f.Find(list_key);
  if (type == "Sequence" && list != nullptr) {
    for (const auto& s : *list) {
      if (HasByteLevel(f.Nested(s), list_key)) return true;
    }
  }
  return false;
}

void CheckDecoder(const json& j) {
  if (j.is_null()) return;
  const std::string type = JsonFields::File(j, "decoder").RequireString("type");
  if (type == "Sequence") {
    for (const auto& d : j.at("decoders")) CheckDecoder(d);
  } else if (type != "ByteLevel" && type != "ByteFallback" && type != "Fuse") {
    // Decoding is plain byte concatenation; anything that rewrites text (Metaspace,
    // Replace, Strip) would decode wrongly, so refuse it rather than guess.
    throw LoadError("unsupported decoder type '" + type + "'");
  }
}

// First special token of a TemplateProcessing "single" template (e.g. Llama-3's
// <|begin_of_text|>), or "" if the post-processor adds none.
std::string FirstTemplateSpecial(const JsonFields& f) {
  const std::string type = NonNullString(f, "type").value_or("");
  const json* processors = f.Find("processors");
  if (type == "Sequence" && processors != nullptr) {
    for (const auto& p : *processors) {
      std::string s = FirstTemplateSpecial(f.Nested(p));
      if (!s.empty()) return s;
    }
  }
  const json* single = f.Find("single");
  if (type == "TemplateProcessing" && single != nullptr && single->is_array() && !single->empty()) {
    const json& first = (*single)[0];
    if (first.contains("SpecialToken")) {
      const json& special = first["SpecialToken"];
      if (!special.is_object()) throw f.Nested(first).TypeError("SpecialToken", "an object");
      return NonNullString(f.Nested(special), "id").value_or("");
    }
  }
  return "";
}

// A merge as its two parts: "a b" strings (older files) or [a, b] pairs (newer ones).
void SplitMerge(const json& m, std::string* a, std::string* b) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos) throw LoadError("malformed merge '" + s + "'");
    a->assign(s, 0, sp);
    b->assign(s, sp + 1, std::string::npos);
  } else if (m.is_array() && m.size() == 2) {
    *a = m[0].get<std::string>();
    *b = m[1].get<std::string>();
  } else {
    throw LoadError("malformed merge entry " + m.dump());
  }
}

// The id of an added_tokens entry. Not JsonFields::RequireInt, which refuses 5.0: any
// JSON number converts here, as nlohmann's get does.
int32_t AddedTokenId(const JsonFields& entry) {
  const json* id = entry.Find("id");
  if (id == nullptr) throw entry.Missing("id");
  return id->get<int32_t>();
}

// "<0x41>" -> 0x41; -1 if the token is not a byte-fallback token.
int ByteFallbackValue(const std::string& tok) {
  if (tok.size() != 6 || tok.compare(0, 3, "<0x") != 0 || tok[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = tok[i];
    v *= 16;
    if (c >= '0' && c <= '9') {
      v += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      v += c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return v;
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Per normalised byte, the original byte range it came from. Normalisation is done per
// grapheme cluster so unchanged clusters map byte for byte; changed ones map to the
// whole cluster. Falls back to the whole segment if cluster-wise normalisation does
// not reproduce `norm` (it always should for NFC/NFKC).
void AlignNormalized(std::string_view seg, const std::string& norm,
                     const std::vector<ti::NormalForm>& forms, std::vector<size_t>* ob,
                     std::vector<size_t>* oe) {
  ob->clear();
  oe->clear();
  std::string rebuilt;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(seg.data());
  size_t cluster_start = 0, i = 0;
  utf8proc_int32_t prev = -1;
  utf8proc_int32_t state = 0;
  auto flush = [&](size_t cs, size_t ce) {
    std::string n(seg.substr(cs, ce - cs));
    for (auto f : forms) n = ti::Normalize(n, f);
    const bool same = n == seg.substr(cs, ce - cs);
    for (size_t k = 0; k < n.size(); ++k) {
      ob->push_back(same ? cs + k : cs);
      oe->push_back(same ? cs + k + 1 : ce);
    }
    rebuilt += n;
  };
  while (i < seg.size()) {
    utf8proc_int32_t cp;
    const auto n = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(seg.size() - i), &cp);
    if (n <= 0) break;  // validated earlier; defensive
    if (prev >= 0 && utf8proc_grapheme_break_stateful(prev, cp, &state)) {
      flush(cluster_start, i);
      cluster_start = i;
    }
    prev = cp;
    i += static_cast<size_t>(n);
  }
  if (cluster_start < seg.size()) flush(cluster_start, seg.size());
  if (rebuilt != norm) {
    ob->assign(norm.size(), 0);
    oe->assign(norm.size(), seg.size());
  }
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::FromJsonText(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw LoadError(std::string("invalid JSON: ") + e.what());
  }
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  try {
    const JsonFields root = JsonFields::File(j, "tokenizer.json");
    const json* model_json = root.Find("model");
    if (model_json == nullptr || !model_json->is_object()) {
      throw LoadError("no \"model\" object");
    }
    const JsonFields model = JsonFields::File(*model_json, "model");
    tok->LoadModelOptions(model);
    const json& pre = FieldOrNull(root, "pre_tokenizer");
    const json& dec = FieldOrNull(root, "decoder");
    tok->byte_level_ = HasByteLevel(JsonFields::File(pre, "pre_tokenizer"), "pretokenizers") ||
                       HasByteLevel(JsonFields::File(dec, "decoder"), "decoders");
    ParseNormalizer(FieldOrNull(root, "normalizer"), &tok->normalizers_);
    CheckDecoder(dec);
    tok->LoadPreTokenizer(pre);

    const json* vocab = model.Find("vocab");
    if (vocab == nullptr || !vocab->is_object()) throw LoadError("no model.vocab");
    const json* added = root.Find("added_tokens");
    if (added != nullptr && !added->is_array()) added = nullptr;  // ignored, as ever
    tok->LoadVocab(*vocab, added);
    const json* merges = model.Find("merges");
    if (merges != nullptr && merges->is_array()) tok->LoadMerges(*merges);
    tok->BuildByteIds();
    if (const auto unk = LenientString(model, "unk_token")) {
      auto it = tok->spelled_.find(*unk);
      if (it != tok->spelled_.end()) tok->unk_id_ = it->second;
    }
    if (added != nullptr) tok->LoadAddedTokens(*added);
    tok->IndexAddedTokens();
    tok->post_processor_first_special_ = FirstTemplateSpecial(
        JsonFields::File(FieldOrNull(root, "post_processor"), "post_processor"));
  } catch (const json::exception& e) {
    throw LoadError(std::string("malformed tokenizer.json: ") + e.what());
  }
  return tok;
}

void BpeTokenizer::LoadModelOptions(const JsonFields& model) {
  const std::string type = NonNullString(model, "type").value_or("BPE");
  if (type != "BPE") throw LoadError("unsupported model type '" + type + "' (only BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto value = LenientString(model, key);
    if (value && !value->empty()) throw LoadError(std::string("unsupported model option ") + key);
  }
  byte_fallback_ = LenientBool(model, "byte_fallback", false);
  ignore_merges_ = LenientBool(model, "ignore_merges", false);
}

// Pre-tokenizer steps, flattened from any Sequence.
void BpeTokenizer::LoadPreTokenizer(const json& pre) {
  if (pre.is_null()) return;
  const JsonFields f = JsonFields::File(pre, "pre_tokenizer");
  const std::string type = f.RequireString("type");
  if (type == "Sequence") {
    for (const auto& s : pre.at("pretokenizers")) LoadPreTokenizer(s);
  } else if (type == "Split") {
    pre_tokenizers_.push_back(ParseSplit(f));
  } else if (type == "ByteLevel") {
    pre_tokenizers_.push_back(ParseByteLevel(f));
  } else {
    throw LoadError("unsupported pre_tokenizer type '" + type + "'");
  }
}

BpeTokenizer::PreTokenizerStep BpeTokenizer::ParseSplit(const JsonFields& split) {
  PreTokenizerStep step;
  step.type = PreTokenizerStep::kSplit;
  const json* pattern_json = split.Find("pattern");
  if (pattern_json == nullptr) throw split.Missing("pattern");
  const JsonFields pattern = split.Nested(*pattern_json);
  if (LenientBool(split, "invert", false)) throw LoadError("unsupported Split option invert=true");
  if (const auto regex = NonNullString(pattern, "Regex")) {
    step.regex = std::make_unique<ti::Regex>(ti::AdaptRegexForPcre2(*regex));
  } else if (const auto literal = NonNullString(pattern, "String")) {
    step.regex = std::make_unique<ti::Regex>(*literal, true);
  } else {
    throw LoadError("Split pattern is neither Regex nor String");
  }
  const std::string b = NonNullString(split, "behavior").value_or("Isolated");
  if (b == "Isolated") {
    step.behavior = PreTokenizerStep::kIsolated;
  } else if (b == "Removed") {
    step.behavior = PreTokenizerStep::kRemoved;
  } else if (b == "MergedWithPrevious") {
    step.behavior = PreTokenizerStep::kMergedWithPrevious;
  } else if (b == "MergedWithNext") {
    step.behavior = PreTokenizerStep::kMergedWithNext;
  } else {
    throw LoadError("unsupported Split behavior '" + b + "'");
  }
  return step;
}

BpeTokenizer::PreTokenizerStep BpeTokenizer::ParseByteLevel(const JsonFields& byte_level) {
  PreTokenizerStep step;
  step.type = PreTokenizerStep::kByteLevel;
  step.behavior = PreTokenizerStep::kIsolated;
  step.add_prefix_space = LenientBool(byte_level, "add_prefix_space", true);
  if (LenientBool(byte_level, "use_regex", true)) {
    step.regex = std::make_unique<ti::Regex>(ti::AdaptRegexForPcre2(kGpt2Pattern));
  }
  return step;
}

// Sizes the id tables to cover the vocabulary and the added tokens, then fills in the
// vocabulary (added tokens come later, once merges have been resolved without them).
void BpeTokenizer::LoadVocab(const json& vocab, const json* added_tokens) {
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) throw LoadError("vocab id of '" + it.key() + "'");
    max_id = std::max(max_id, it.value().get<int32_t>());
  }
  if (added_tokens != nullptr) {
    for (const auto& a : *added_tokens) {
      max_id = std::max(max_id, AddedTokenId(JsonFields::File(a, "added_tokens")));
    }
  }
  if (max_id < 0) throw LoadError("empty vocabulary");
  bytes_.assign(static_cast<size_t>(max_id) + 1, std::string());
  kinds_.assign(static_cast<size_t>(max_id) + 1, IdKind::kNone);
  vocab_.reserve(vocab.size());
  spelled_.reserve(vocab.size() + 64);
  std::string raw;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const std::string& spelled = it.key();
    const int32_t id = it.value().get<int32_t>();
    if (id < 0) throw LoadError("negative vocab id for '" + spelled + "'");
    std::string key = spelled;
    std::string decoded = spelled;
    const int fb = byte_fallback_ ? ByteFallbackValue(spelled) : -1;
    if (fb >= 0) {
      decoded = std::string(1, static_cast<char>(fb));
    } else if (byte_level_ && ti::UnicodeToBytes(spelled, &raw)) {
      key = raw;
      decoded = raw;
    }
    bytes_[id] = decoded;
    kinds_[id] = IdKind::kVocab;
    if (fb < 0) vocab_.emplace(std::move(key), id);
    spelled_.emplace(spelled, id);
  }
}

void BpeTokenizer::LoadMerges(const json& merges) {
  merges_.reserve(merges.size());
  uint32_t rank = 0;
  std::string a, b;
  for (const auto& m : merges) {
    SplitMerge(m, &a, &b);
    auto ia = spelled_.find(a), ib = spelled_.find(b), im = spelled_.find(a + b);
    if (ia == spelled_.end() || ib == spelled_.end() || im == spelled_.end()) {
      throw LoadError("merge '" + a + " " + b + "' refers to a token not in the vocabulary");
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                         static_cast<uint32_t>(ib->second);
    merges_.emplace(key, std::make_pair(rank++, im->second));
  }
}

// Per byte, the token for it alone: the single-byte token of a byte-level vocabulary,
// else the <0xXX> byte-fallback token.
void BpeTokenizer::BuildByteIds() {
  byte_ids_.fill(-1);
  for (int bv = 0; bv < 256; ++bv) {
    if (byte_level_) {
      auto it = vocab_.find(std::string(1, static_cast<char>(bv)));
      if (it != vocab_.end()) byte_ids_[bv] = it->second;
    }
    if (byte_ids_[bv] < 0 && byte_fallback_) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", bv);
      auto it = spelled_.find(name);
      if (it != spelled_.end()) byte_ids_[bv] = it->second;
    }
  }
}

void BpeTokenizer::LoadAddedTokens(const json& added_tokens) {
  for (const auto& a : added_tokens) {
    const JsonFields entry = JsonFields::File(a, "added_tokens");
    AddedToken t;
    t.content = entry.RequireString("content");
    t.id = AddedTokenId(entry);
    t.special = LenientBool(entry, "special", false);
    t.lstrip = LenientBool(entry, "lstrip", false);
    t.rstrip = LenientBool(entry, "rstrip", false);
    if (t.id < 0) throw LoadError("negative added token id for '" + t.content + "'");
    if (t.content.empty()) continue;
    bytes_[t.id] = t.content;
    kinds_[t.id] = t.special ? IdKind::kSpecial : IdKind::kAdded;
    spelled_[t.content] = t.id;
    added_.push_back(std::move(t));
  }
}

// added_by_first_byte_: candidates per first byte, longest first, for EncodeImpl's scan.
void BpeTokenizer::IndexAddedTokens() {
  for (size_t k = 0; k < added_.size(); ++k) {
    const auto first = static_cast<unsigned char>(added_[k].content[0]);
    added_by_first_byte_[first].push_back(static_cast<int>(k));
  }
  for (auto& v : added_by_first_byte_) {
    std::stable_sort(v.begin(), v.end(), [&](int x, int y) {
      return added_[x].content.size() > added_[y].content.size();
    });
  }
}

void BpeTokenizer::ApplyConfig(const std::string& dir) {
  const bool explicit_add_bos = ApplyTokenizerConfig(dir);
  if (!post_processor_first_special_.empty()) {
    auto id = TokenToId(post_processor_first_special_);
    if (id && !bos_id_) bos_id_ = id;
    if (id && !explicit_add_bos && bos_id_ == id) add_bos_ = true;
  }
}

std::vector<TokenSpan> BpeTokenizer::EncodeSpans(std::string_view text,
                                                 const std::vector<TextRange>& literal,
                                                 bool want_offsets) const {
  const size_t bad = ti::FindInvalidUtf8(text);
  if (bad != std::string_view::npos) {
    throw Unprocessable("input is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
  }
  std::vector<TokenSpan> spans;
  ti::LiteralCursor literal_at(literal);
  // Added tokens are cut out first (leftmost, then longest), as HF does, so the
  // normalizer and pre-tokenizer never see them.
  size_t seg_start = 0, i = 0;
  while (i < text.size()) {
    const auto& cands = added_by_first_byte_[static_cast<unsigned char>(text[i])];
    const AddedToken* hit = nullptr;
    for (int k : cands) {
      const AddedToken& t = added_[k];
      if (t.special && literal_at.Overlaps(i, i + t.content.size())) continue;
      if (text.compare(i, t.content.size(), t.content) == 0) {
        hit = &t;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t seg_end = i, tok_end = i + hit->content.size();
    if (hit->lstrip) {
      while (seg_end > seg_start && IsAsciiSpace(text[seg_end - 1])) --seg_end;
    }
    if (hit->rstrip) {
      while (tok_end < text.size() && IsAsciiSpace(text[tok_end])) ++tok_end;
    }
    EncodeSegment(text.substr(seg_start, seg_end - seg_start), seg_start, want_offsets, &spans);
    spans.push_back({hit->id, seg_end, tok_end});
    seg_start = i = tok_end;
  }
  EncodeSegment(text.substr(seg_start), seg_start, want_offsets, &spans);
  return spans;
}

void BpeTokenizer::EncodeSegment(std::string_view seg, size_t base, bool want_offsets,
                                 std::vector<TokenSpan>* out) const {
  if (seg.empty()) return;
  std::string norm(seg);
  for (auto f : normalizers_) norm = ti::Normalize(norm, f);
  const bool identity = norm == seg;
  std::vector<size_t> ob, oe;
  if (want_offsets && !identity) AlignNormalized(seg, norm, normalizers_, &ob, &oe);
  for (const Piece& piece : PreTokenize(norm)) {
    const WordTokens wt = TokenizeWord(piece.text);
    uint32_t prev_end = 0;
    for (size_t k = 0; k < wt.ids.size(); ++k) {
      size_t start = 0, stop = 0;
      if (want_offsets) {
        auto to_norm = [&](size_t p) {
          size_t n = piece.norm_start + (piece.prefixed ? (p == 0 ? 0 : p - 1) : p);
          return std::min(n, norm.size() - 1);
        };
        const size_t na = to_norm(prev_end);
        const size_t nl = to_norm(wt.ends[k] == 0 ? 0 : wt.ends[k] - 1);
        start = identity ? na : ob[na];
        stop = identity ? nl + 1 : oe[nl];
      }
      out->push_back({wt.ids[k], base + start, base + stop});
      prev_end = wt.ends[k];
    }
  }
}

std::vector<BpeTokenizer::Piece> BpeTokenizer::PreTokenize(const std::string& normalized) const {
  std::vector<Piece> pieces;
  pieces.push_back({normalized, 0, false});
  auto sub = [](const Piece& p, size_t a, size_t b) {
    Piece s;
    s.text = p.text.substr(a, b - a);
    s.prefixed = p.prefixed && a == 0;
    s.norm_start = p.norm_start + (p.prefixed ? (a == 0 ? 0 : a - 1) : a);
    return s;
  };
  for (const PreTokenizerStep& step : pre_tokenizers_) {
    std::vector<Piece> next;
    next.reserve(pieces.size() * 2);
    for (Piece& p : pieces) {
      if (step.type == PreTokenizerStep::kByteLevel && step.add_prefix_space && !p.prefixed &&
          !p.text.empty() && p.text[0] != ' ') {
        p.text.insert(p.text.begin(), ' ');
        p.prefixed = true;
      }
      if (!step.regex) {
        next.push_back(std::move(p));
        continue;
      }
      const auto matches = step.regex->FindAll(p.text);
      // Cover the piece with alternating gap / match ranges, then combine per behavior.
      std::vector<std::pair<size_t, size_t>> out_ranges;
      size_t pos = 0;
      bool pending_merge_next = false;
      auto emit = [&](size_t a, size_t b, bool is_match) {
        if (a == b) return;
        switch (step.behavior) {
          case PreTokenizerStep::kIsolated:
            out_ranges.emplace_back(a, b);
            break;
          case PreTokenizerStep::kRemoved:
            if (!is_match) out_ranges.emplace_back(a, b);
            break;
          case PreTokenizerStep::kMergedWithPrevious:
            if (is_match && !out_ranges.empty() && out_ranges.back().second == a) {
              out_ranges.back().second = b;
            } else {
              out_ranges.emplace_back(a, b);
            }
            break;
          case PreTokenizerStep::kMergedWithNext:
            if (pending_merge_next && out_ranges.back().second == a) {
              out_ranges.back().second = b;
            } else {
              out_ranges.emplace_back(a, b);
            }
            pending_merge_next = is_match;
            break;
        }
      };
      for (const auto& [mb, me] : matches) {
        emit(pos, mb, false);
        emit(mb, me, true);
        pos = me;
      }
      emit(pos, p.text.size(), false);
      for (const auto& [a, b] : out_ranges) next.push_back(sub(p, a, b));
    }
    pieces = std::move(next);
  }
  return pieces;
}

BpeTokenizer::WordTokens BpeTokenizer::TokenizeWord(const std::string& word) const {
  if (word.size() > kMaxCachedWordBytes) return TokenizeWordUncached(word);
  {
    std::shared_lock lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) return it->second;
  }
  WordTokens wt = TokenizeWordUncached(word);
  std::unique_lock lock(cache_mu_);
  // Crude bound: dropping everything is rare and keeps memory flat without LRU work.
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(word, wt);
  return wt;
}

void BpeTokenizer::InitialSymbols(const std::string& word, std::vector<int32_t>* ids,
                                  std::vector<uint32_t>* ends) const {
  auto push_bytes = [&](size_t from, size_t to) {
    for (size_t b = from; b < to; ++b) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(word[b])];
      if (id >= 0) {
        ids->push_back(id);
        ends->push_back(static_cast<uint32_t>(b + 1));
      } else if (unk_id_) {
        ids->push_back(*unk_id_);
        ends->push_back(static_cast<uint32_t>(b + 1));
      }
    }
  };
  if (byte_level_) {
    push_bytes(0, word.size());
    return;
  }
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(word.data());
  size_t i = 0;
  while (i < word.size()) {
    utf8proc_int32_t cp;
    auto n = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(word.size() - i), &cp);
    const size_t len = n > 0 ? static_cast<size_t>(n) : 1;
    auto it = vocab_.find(word.substr(i, len));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      ends->push_back(static_cast<uint32_t>(i + len));
    } else if (byte_fallback_) {
      push_bytes(i, i + len);
    } else if (unk_id_) {
      ids->push_back(*unk_id_);
      ends->push_back(static_cast<uint32_t>(i + len));
    }
    i += len;
  }
}

BpeTokenizer::WordTokens BpeTokenizer::TokenizeWordUncached(const std::string& word) const {
  WordTokens wt;
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      wt.ids.push_back(it->second);
      wt.ends.push_back(static_cast<uint32_t>(word.size()));
      return wt;
    }
  }
  std::vector<int32_t> ids;
  std::vector<uint32_t> ends;
  InitialSymbols(word, &ids, &ends);
  const int n = static_cast<int>(ids.size());
  if (n <= 1 || merges_.empty()) {
    wt.ids = std::move(ids);
    wt.ends = std::move(ends);
    return wt;
  }
  // Doubly linked symbols plus a min-heap of candidate merges (rank, position):
  // O(n log n) however long the word, unlike rescanning for the best pair each time.
  std::vector<int32_t> prev(n), next(n);
  for (int k = 0; k < n; ++k) {
    prev[k] = k - 1;
    next[k] = k + 1 < n ? k + 1 : -1;
  }
  struct Cand {
    uint32_t rank;
    int32_t left;
    int32_t left_id;
    int32_t right_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto try_push = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = next[l];
    if (r < 0) return;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ids[l])) << 32) |
                         static_cast<uint32_t>(ids[r]);
    auto it = merges_.find(key);
    if (it != merges_.end()) heap.push({it->second.first, l, ids[l], ids[r]});
  };
  for (int k = 0; k + 1 < n; ++k) try_push(k);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int32_t l = c.left;
    if (ids[l] != c.left_id) continue;  // stale: l was merged or removed since
    const int32_t r = next[l];
    if (r < 0 || ids[r] != c.right_id) continue;
    ids[l] = merges_
                 .find((static_cast<uint64_t>(static_cast<uint32_t>(c.left_id)) << 32) |
                       static_cast<uint32_t>(c.right_id))
                 ->second.second;
    ends[l] = ends[r];
    next[l] = next[r];
    if (next[r] >= 0) prev[next[r]] = l;
    ids[r] = -1;
    try_push(prev[l]);
    try_push(l);
  }
  for (int32_t k = 0; k >= 0; k = next[k]) {
    wt.ids.push_back(ids[k]);
    wt.ends.push_back(ends[k]);
  }
  return wt;
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= VocabSize() || kinds_[id] == IdKind::kNone) {
    throw Unprocessable("unknown token id " + std::to_string(id));
  }
  return bytes_[id];
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  auto it = spelled_.find(std::string(token));
  if (it == spelled_.end()) return std::nullopt;
  return it->second;
}

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < VocabSize() && kinds_[id] == IdKind::kSpecial;
}

}  // namespace gritserve
