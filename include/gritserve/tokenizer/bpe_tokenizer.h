// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json. Use
// Tokenizer::FromDirectory; this header exists for the tokenizer layer's own code.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gritserve/tokenizer/text_util.h"
#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve {

class JsonFields;

class BpeTokenizer : public Tokenizer {
 public:
  // Parses tokenizer.json text; throws LoadError naming the unsupported or bad part.
  static std::unique_ptr<BpeTokenizer> FromJsonText(const std::string& json_text);

  std::string TokenBytes(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  int32_t VocabSize() const override { return static_cast<int32_t>(bytes_.size()); }
  bool IsSpecial(int32_t id) const override;
  std::string Kind() const override { return "bpe"; }

  // Sets add_bos from a TemplateProcessing post-processor that starts with the BOS
  // token (Llama-3 style), used when tokenizer_config.json does not say.
  bool post_processor_adds_bos() const { return post_processor_adds_bos_; }
  void ApplyConfig(const std::string& dir);

 private:
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special;
    bool lstrip;
    bool rstrip;
  };
  struct PreTokenizerStep {
    enum Type { kSplit, kByteLevel } type;
    std::unique_ptr<tokenizer_internal::Regex> regex;  // kSplit, or kByteLevel use_regex
    enum Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext } behavior;
    bool add_prefix_space = false;
  };
  // A pre-tokenized piece: `text` is a slice of the normalised segment starting at
  // `norm_start`, possibly with a one-byte space prepended (ByteLevel add_prefix_space).
  struct Piece {
    std::string text;
    size_t norm_start;
    bool prefixed;
  };
  // Tokens of one pre-tokenized word with the end byte of each within the word.
  struct WordTokens {
    std::vector<int32_t> ids;
    std::vector<uint32_t> ends;
  };
  enum class IdKind : uint8_t { kNone, kVocab, kAdded, kSpecial };

  BpeTokenizer() = default;
  // Loading, one part of tokenizer.json each, in the order FromJsonText calls them.
  void LoadModelOptions(const JsonFields& model);
  void LoadPreTokenizer(const nlohmann::json& pre);
  static PreTokenizerStep ParseSplit(const JsonFields& split);
  static PreTokenizerStep ParseByteLevel(const JsonFields& byte_level);
  void LoadVocab(const nlohmann::json& vocab, const nlohmann::json* added_tokens);
  void LoadMerges(const nlohmann::json& merges);
  void BuildByteIds();
  void LoadAddedTokens(const nlohmann::json& added_tokens);
  void IndexAddedTokens();

  std::vector<TokenSpan> EncodeSpans(std::string_view text, const std::vector<TextRange>& literal,
                                     bool want_offsets) const override;
  void EncodeSegment(std::string_view seg, size_t base, bool want_offsets,
                     std::vector<TokenSpan>* out) const;
  std::vector<Piece> PreTokenize(const std::string& normalized) const;
  WordTokens TokenizeWord(const std::string& word) const;
  WordTokens TokenizeWordUncached(const std::string& word) const;
  void InitialSymbols(const std::string& word, std::vector<int32_t>* ids,
                      std::vector<uint32_t>* ends) const;

  std::vector<std::string> bytes_;  // decoded bytes per id
  std::vector<IdKind> kinds_;
  std::unordered_map<std::string, int32_t> vocab_;    // model token bytes -> id
  std::unordered_map<std::string, int32_t> spelled_;  // token as spelled in the file
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // pair -> rank, id
  std::vector<AddedToken> added_;
  std::array<std::vector<int>, 256> added_by_first_byte_;  // longest first
  std::vector<tokenizer_internal::NormalForm> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::array<int32_t, 256> byte_ids_;  // single-byte token (byte-level) or <0xXX>, or -1
  bool byte_level_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::optional<int32_t> unk_id_;
  bool post_processor_adds_bos_ = false;
  std::string post_processor_first_special_;

  static constexpr size_t kMaxCachedWordBytes = 64;
  static constexpr size_t kMaxCacheEntries = 1 << 16;
  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, WordTokens> cache_;
};

}  // namespace gritserve
