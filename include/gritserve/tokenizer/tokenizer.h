// Tokenizers: byte-level BPE from a Hugging Face tokenizer.json (Qwen2, Llama-3) and
// sentencepiece tokenizer.model files (Mistral, Llama-2, GritLM-7B), behind one
// interface. All methods are const and safe to call from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gritserve {

// Byte offsets into the original (unnormalised where possible) input; best effort
// where normalisation changed the text.
struct TokenSpan {
  int32_t id;
  size_t start;
  size_t stop;
};

// A byte range [begin, end) of a text.
struct TextRange {
  size_t begin;
  size_t end;
};

class StreamDecoder;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // DIR/tokenizer.json (byte-level BPE) if present, else DIR/tokenizer.model
  // (sentencepiece). A tokenizer.json whose pipeline is not supported (e.g. the
  // Metaspace one Mistral ships) falls back to tokenizer.model when that exists.
  // Also reads DIR/tokenizer_config.json when present. Throws LoadError.
  static std::unique_ptr<Tokenizer> FromDirectory(const std::string& dir);

  // parse_special: text spelling a special token becomes that token (HF's
  // default); without it, special tokens are spelled out as plain text (added
  // tokens that are not special are always recognised, as in HF). Never adds
  // BOS. Throws Unprocessable on invalid UTF-8.
  std::vector<int32_t> Encode(std::string_view text, bool parse_special = true) const;
  std::vector<TokenSpan> EncodeWithOffsets(std::string_view text, bool parse_special = true) const;
  // Encodes `text` as one string (so tokens merge across the ranges' edges
  // exactly as without them), but a special token is recognised only where it
  // overlaps none of `literal` (sorted, disjoint): text a client wrote inside a
  // template's markup stays text.
  std::vector<int32_t> EncodeWithLiterals(std::string_view text,
                                          const std::vector<TextRange>& literal) const;
  // Concatenated bytes of the tokens, invalid UTF-8 replaced by U+FFFD. Throws
  // Unprocessable naming an unknown id. Virtual with a default built on
  // AppendDecoded(), so test doubles only need TokenBytes().
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Raw bytes of one token (may be an incomplete UTF-8 sequence).
  virtual std::string TokenBytes(int32_t id) const = 0;
  // Vocabulary or added/special token, spelled as in the tokenizer file.
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  // 1 + the largest id the tokenizer can produce.
  virtual int32_t VocabSize() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  virtual std::string Kind() const = 0;  // "bpe" or "sentencepiece"

  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  std::optional<int32_t> pad_id() const { return pad_id_; }
  bool add_bos() const { return add_bos_; }

 protected:
  friend class StreamDecoder;

  // Encode's one implementation: special tokens only where they overlap no
  // range of `literal`; offsets only when `want_offsets` (else zeros).
  virtual std::vector<TokenSpan> EncodeSpans(std::string_view text,
                                             const std::vector<TextRange>& literal,
                                             bool want_offsets) const = 0;

  // Appends the decoded bytes of `id`. `at_start` is true until the first non-special
  // token, so sentencepiece can drop its one dummy-prefix space there, and Decode()
  // and StreamDecoder agree byte for byte.
  virtual void AppendDecoded(int32_t id, bool at_start, std::string* out) const;

  // Applies DIR/tokenizer_config.json (bos/eos/pad tokens, add_bos_token) if present.
  // Returns whether it set add_bos_token explicitly.
  bool ApplyTokenizerConfig(const std::string& dir);

  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  std::optional<int32_t> pad_id_;
  bool add_bos_ = false;
};

// Streaming detokeniser: bytes of an incomplete UTF-8 sequence are held back until
// completed, so every Push() result is valid UTF-8; the concatenation of all Push()
// results and Flush() equals Decode() of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = true);
  std::string Push(int32_t id);
  // Returns what is held back (an unfinished sequence becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  bool started_ = false;  // a non-special token has been pushed
  std::string pending_;
};

}  // namespace gritserve
