// Sentencepiece tokenizer.model wrapper. Use Tokenizer::FromDirectory; this header
// exists for the tokenizer layer's own code.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Throws LoadError naming the file.
  static std::unique_ptr<SentencePieceTokenizer> FromFile(const std::string& path);
  ~SentencePieceTokenizer() override;

  std::string TokenBytes(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  int32_t VocabSize() const override { return static_cast<int32_t>(bytes_.size()); }
  bool IsSpecial(int32_t id) const override;
  std::string Kind() const override { return "sentencepiece"; }

  void ApplyConfig(const std::string& dir);

 protected:
  std::vector<TokenSpan> EncodeSpans(std::string_view text, const std::vector<TextRange>& literal,
                                     bool want_offsets) const override;
  void AppendDecoded(int32_t id, bool at_start, std::string* out) const override;

 private:
  SentencePieceTokenizer();
  void EncodeSegment(std::string_view seg, size_t base, std::vector<TokenSpan>* out) const;

  void* model_ = nullptr;  // a sentencepiece processor inside the isolated module (spm_api.h)
  std::vector<std::string> bytes_;  // "▁" -> " ", <0xXX> -> the byte, control -> as spelled
  std::vector<bool> special_;       // control and unknown pieces
  std::vector<bool> byte_piece_;
  std::array<std::vector<int32_t>, 256> specials_by_first_byte_;  // longest first
  bool dummy_prefix_ = false;
};

}  // namespace gritserve
