// Text helpers shared by the tokenizers, the templates and the tokenizer writer:
// UTF-8 checks and repair, Unicode normalisation (utf8proc), the GPT-2 byte <-> unicode
// mapping and a thin PCRE2 wrapper. Not meant for use outside the tokenizer layer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve::tokenizer_internal {

// Follows a left-to-right scan through sorted, disjoint ranges of literal text
// (Tokenizer::EncodeWithLiterals), where special tokens are not recognised.
class LiteralCursor {
 public:
  explicit LiteralCursor(const std::vector<TextRange>& ranges) : ranges_(ranges) {}
  // Whether [begin, end) overlaps a non-empty range; `begin` must not decrease
  // from one call to the next.
  bool Overlaps(size_t begin, size_t end) {
    while (next_ < ranges_.size() &&
           (ranges_[next_].end <= begin || ranges_[next_].begin >= ranges_[next_].end)) {
      ++next_;
    }
    return next_ < ranges_.size() && ranges_[next_].begin < end;
  }

 private:
  const std::vector<TextRange>& ranges_;
  size_t next_ = 0;  // the first range not wholly before the scan
};

// Byte offset of the first invalid UTF-8 sequence in `text`, or npos if it is valid.
size_t FindInvalidUtf8(std::string_view text);

// Replaces every maximal invalid subpart with U+FFFD (the WHATWG / Python "replace"
// convention), so decoded text is always valid UTF-8.
std::string SanitizeUtf8(std::string_view bytes);

// Length of a trailing, still-completable UTF-8 prefix (0..3): bytes a streaming
// decoder must hold back until the next token arrives.
size_t IncompleteUtf8Tail(std::string_view bytes);

enum class NormalForm { kNone, kNfc, kNfkc, kNfd, kNfkd };
// `text` must be valid UTF-8. Throws Unprocessable if utf8proc refuses it.
std::string Normalize(std::string_view text, NormalForm form);

// GPT-2's reversible byte -> printable code point mapping (as UTF-8 strings).
const std::array<std::string, 256>& ByteToUnicode();
// Inverse of ByteToUnicode over a whole token string; false if a code point is not
// one of the 256 mapped ones (the token is then not a byte-level token).
bool UnicodeToBytes(std::string_view token, std::string* bytes);

// Compiled PCRE2 pattern (UTF + UCP, JIT when available). Thread-safe to use from
// many threads at once: per-call state lives on the caller's stack / thread.
class Regex {
 public:
  // Throws LoadError naming the pattern and PCRE2's message. `literal` matches the
  // pattern as a plain string.
  explicit Regex(const std::string& pattern, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches [begin, end) over valid UTF-8 `text`, left to right.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// HF's tokenizers use Oniguruma, whose \s also matches U+0085 (NEL); PCRE2's UCP \s
// does not. Rewrites \s / \S so the two engines split identically.
std::string AdaptRegexForPcre2(const std::string& pattern);

}  // namespace gritserve::tokenizer_internal
