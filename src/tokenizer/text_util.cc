#include "gritserve/tokenizer/text_util.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>

#include "gritserve/common/error.h"

namespace gritserve::tokenizer_internal {
namespace {

enum class SeqKind { kValid, kIncomplete, kInvalid };

// Classifies the UTF-8 sequence at p[0..n). kValid / kInvalid set *len (for kInvalid
// the maximal subpart, at least 1 byte). Follows Unicode table 3-7, which utf8proc
// cannot tell us: it only says "invalid", not "valid so far but cut short".
SeqKind ClassifySequence(const unsigned char* p, size_t n, size_t* len) {
  const unsigned char b0 = p[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 < 0x80) {
    *len = 1;
    return SeqKind::kValid;
  } else if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *len = 1;
    return SeqKind::kInvalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= n) return SeqKind::kIncomplete;
    const unsigned char b = p[i];
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *len = i;
      return SeqKind::kInvalid;
    }
  }
  *len = need;
  return SeqKind::kValid;
}

constexpr char kReplacement[] = "\xEF\xBF\xBD";

}  // namespace

size_t FindInvalidUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    // ASCII fast path: most input is ASCII and utf8proc_iterate is a call per char.
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n =
        utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(text.size() - i), &cp);
    if (n <= 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len = 0;
    const SeqKind kind = ClassifySequence(p + i, bytes.size() - i, &len);
    if (kind == SeqKind::kValid) {
      out.append(bytes.data() + i, len);
    } else {
      out.append(kReplacement);
      if (kind == SeqKind::kIncomplete) break;  // the truncated tail is one subpart
    }
    i += len;
  }
  return out;
}

size_t IncompleteUtf8Tail(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  // A completable prefix is at most 3 bytes; look for its lead byte.
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char b = p[n - back];
    if (b >= 0x80 && b <= 0xBF) continue;  // continuation byte: keep looking
    size_t len = 0;
    return ClassifySequence(p + n - back, back, &len) == SeqKind::kIncomplete ? back : 0;
  }
  return 0;
}

std::string Normalize(std::string_view text, NormalForm form) {
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNone:
      return std::string(text);
    case NormalForm::kNfc:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalForm::kNfkc:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalForm::kNfd:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalForm::kNfkd:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  if (text.empty()) return {};
  // Pure ASCII is invariant under every normal form; skip the allocation-heavy call.
  bool ascii = true;
  for (unsigned char c : text) {
    if (c >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(text);
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &dst,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    throw Unprocessable(std::string("cannot normalize text: ") + utf8proc_errmsg(n));
  }
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

const std::array<std::string, 256>& ByteToUnicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    // Printable Latin-1 bytes map to themselves; the rest are shifted to 256+ so
    // every byte has a visible, non-whitespace code point (GPT-2's bytes_to_unicode).
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const int cp = keep ? b : next++;
      utf8proc_uint8_t buf[4];
      const auto n = utf8proc_encode_char(cp, buf);
      t[b] = std::string(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
    }
    return t;
  }();
  return table;
}

bool UnicodeToBytes(std::string_view token, std::string* bytes) {
  // Every mapped code point is below 0x144; a flat table keeps vocabulary loading
  // (150k tokens) cheap.
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> m;
    m.fill(-1);
    const auto& fwd = ByteToUnicode();
    for (int b = 0; b < 256; ++b) {
      utf8proc_int32_t cp;
      utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(fwd[b].data()),
                       static_cast<utf8proc_ssize_t>(fwd[b].size()), &cp);
      m[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  bytes->clear();
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  size_t i = 0;
  while (i < token.size()) {
    int32_t cp;
    if (p[i] < 0x80) {
      cp = p[i++];
    } else if ((p[i] & 0xE0) == 0xC0 && i + 1 < token.size()) {
      cp = ((p[i] & 0x1F) << 6) | (p[i + 1] & 0x3F);
      i += 2;
    } else {
      return false;  // 3+ byte sequences are never mapped bytes
    }
    if (cp >= static_cast<int32_t>(inverse.size()) || inverse[cp] < 0) return false;
    bytes->push_back(static_cast<char>(inverse[cp]));
  }
  return true;
}

std::string AdaptRegexForPcre2(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (e == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

namespace {

// One JIT stack per thread: a JIT stack must not be used by two matches at once, and a
// thread runs one match at a time. The default 32 KiB machine stack is too small for
// long inputs with look-ahead alternatives.
struct ThreadMatchState {
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* context = nullptr;
  ThreadMatchState() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    if (stack) pcre2_jit_stack_free(stack);
    if (context) pcre2_match_context_free(context);
  }
};

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return std::string(reinterpret_cast<const char*>(buf));
}

}  // namespace

Regex::Regex(const std::string& pattern, bool literal) : impl_(std::make_unique<Impl>()) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // PCRE2_UCP (Unicode properties for \w, \d, ...) means nothing to a literal,
  // and PCRE2 refuses the two together.
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                              &err, &err_offset, nullptr);
  if (impl_->code == nullptr) {
    throw LoadError("cannot compile pre-tokenizer regex '" + pattern + "' at offset " +
                    std::to_string(err_offset) + ": " + Pcre2Message(err));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

std::vector<std::pair<size_t, size_t>> Regex::FindAll(std::string_view text) const {
  thread_local ThreadMatchState state;
  std::vector<std::pair<size_t, size_t>> matches;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  if (md == nullptr) throw Error(ErrorKind::kInternal, "pcre2: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    // NO_UTF_CHECK: callers validated the text; without it PCRE2 re-scans the whole
    // subject on every call, which is quadratic over a long input.
    const int rc =
        pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      throw Error(ErrorKind::kInternal, "pre-tokenizer regex failed: " + Pcre2Message(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e == b) {
      // Empty match: step over one code point so the scan always advances.
      if (b >= text.size()) break;
      e = b + 1;
      while (e < text.size() && (static_cast<unsigned char>(text[e]) & 0xC0) == 0x80) ++e;
      pos = e;
      continue;
    }
    matches.emplace_back(b, e);
    pos = e;
  }
  pcre2_match_data_free(md);
  return matches;
}

}  // namespace gritserve::tokenizer_internal
