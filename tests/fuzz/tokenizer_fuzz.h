// The tokenizer checks shared by the BPE and sentencepiece targets. The input's
// first byte picks the options; the rest is the text, and (read as 32-bit
// words) a list of ids to decode. Any bytes, valid UTF-8 or not: the tokenizer
// must answer or refuse with a typed Error, never crash.
#pragma once

#include <utf8proc.h>

#include <cstring>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "gritserve/common/error.h"
#include "gritserve/tokenizer/tokenizer.h"

namespace gritserve::fuzz {

inline bool ValidUtf8(const std::string& s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t i = 0, n = static_cast<utf8proc_ssize_t>(s.size());
  while (i < n) {
    utf8proc_int32_t c;
    const utf8proc_ssize_t len = utf8proc_iterate(p + i, n - i, &c);
    if (len <= 0) return false;
    i += len;
  }
  return true;
}

inline void CheckEncode(const Tokenizer& tok, const std::string& text, bool special) {
  const int32_t vocab = tok.VocabSize();
  const std::vector<int32_t> ids = tok.Encode(text, special);
  for (int32_t id : ids) Check(id >= 0 && id < vocab, "encoded id inside the vocabulary");
  const std::vector<TokenSpan> spans = tok.EncodeWithOffsets(text, special);
  for (const TokenSpan& s : spans) {
    Check(s.id >= 0 && s.id < vocab, "span id inside the vocabulary");
    Check(s.start <= s.stop && s.stop <= text.size(), "span inside the text");
  }
  tok.Decode(ids, /*skip_special=*/false);
}

// Decoding any ids: in the vocabulary they decode, outside it a typed refusal.
inline void CheckDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  std::string decoded;
  try {
    decoded = tok.Decode(ids, skip);
  } catch (const Error&) {
    return;
  }
  StreamDecoder stream(tok, skip);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = stream.Push(id);
    Check(ValidUtf8(piece), "every streamed piece is valid UTF-8");
    streamed += piece;
  }
  streamed += stream.Flush();
  if (ValidUtf8(decoded)) Check(streamed == decoded, "the stream adds up to Decode()");
}

inline void FuzzTokenizer(const Tokenizer& tok, const uint8_t* data, size_t size) {
  if (size == 0) return;
  const uint8_t flags = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    CheckEncode(tok, text, (flags & 1) != 0);
  } catch (const Error&) {
  }
  std::vector<int32_t> ids((size - 1) / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data + 1, ids.size() * 4);
  // Mostly ids in the vocabulary (bit 2 keeps them as read).
  if ((flags & 4) == 0) {
    for (int32_t& id : ids) id = static_cast<int32_t>(static_cast<uint32_t>(id) % tok.VocabSize());
  }
  CheckDecode(tok, ids, (flags & 2) != 0);
}

}  // namespace gritserve::fuzz
