#include "gritserve/tokenizer/sentencepiece_tokenizer.h"

#include <algorithm>

#include "gritserve/common/error.h"
#include "gritserve/tokenizer/text_util.h"
#include "spm_api.h"

namespace gritserve {

namespace ti = tokenizer_internal;

namespace {

constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581, sentencepiece's space

std::string ReplaceSpaceSymbol(const std::string& piece) {
  std::string out;
  out.reserve(piece.size());
  size_t i = 0;
  while (i < piece.size()) {
    if (piece.compare(i, 3, kSpaceSymbol) == 0) {
      out += ' ';
      i += 3;
    } else {
      out += piece[i++];
    }
  }
  return out;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer() = default;

SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (model_ != nullptr) Spm().destroy(model_);
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::FromFile(const std::string& path) {
  std::unique_ptr<SentencePieceTokenizer> tok(new SentencePieceTokenizer());
  const SpmApi& spm = Spm();
  std::string error;
  tok->model_ = spm.load(path, /*is_proto=*/false, &error);
  if (tok->model_ == nullptr) {
    throw LoadError("cannot load sentencepiece model " + path + ": " + error);
  }
  const int n = spm.piece_size(tok->model_);
  if (n <= 0) throw LoadError("sentencepiece model " + path + " has no pieces");
  tok->bytes_.resize(n);
  tok->special_.assign(n, false);
  tok->byte_piece_.assign(n, false);
  for (int id = 0; id < n; ++id) {
    const std::string piece = spm.id_to_piece(tok->model_, id);
    const SpmPieceKind kind = spm.piece_kind(tok->model_, id);
    if (kind == SpmPieceKind::kByte) {
      // Byte pieces are spelled <0xXX>.
      tok->bytes_[id] =
          std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
      tok->byte_piece_[id] = true;
    } else if (kind == SpmPieceKind::kControl || kind == SpmPieceKind::kUnknown) {
      // Shown as spelled (HF's convention) unless the caller skips special tokens.
      tok->bytes_[id] = piece;
      tok->special_[id] = true;
      if (!piece.empty()) {
        tok->specials_by_first_byte_[static_cast<unsigned char>(piece[0])].push_back(id);
      }
    } else {
      tok->bytes_[id] = ReplaceSpaceSymbol(piece);
    }
  }
  for (auto& v : tok->specials_by_first_byte_) {
    std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) {
      return tok->bytes_[a].size() > tok->bytes_[b].size();
    });
  }
  // The normalizer spec is not reachable through the public API; probe it instead: with
  // add_dummy_prefix, a lone word comes back as "▁word".
  std::vector<SpmPiece> probe;
  if (!spm.encode(tok->model_, "x", &probe, &error)) {
    throw LoadError("sentencepiece model " + path + " cannot encode: " + error);
  }
  tok->dummy_prefix_ =
      !probe.empty() && spm.id_to_piece(tok->model_, probe[0].id).compare(0, 3, kSpaceSymbol) == 0;
  const int bos = spm.special_id(tok->model_, 0), eos = spm.special_id(tok->model_, 1),
            pad = spm.special_id(tok->model_, 2);
  if (bos >= 0) tok->bos_id_ = bos;
  if (eos >= 0) tok->eos_id_ = eos;
  if (pad >= 0) tok->pad_id_ = pad;
  // Llama-2 / Mistral convention; tokenizer_config.json may override.
  tok->add_bos_ = bos >= 0;
  return tok;
}

void SentencePieceTokenizer::ApplyConfig(const std::string& dir) { ApplyTokenizerConfig(dir); }

// Offsets come from sentencepiece at no extra cost, so `want_offsets` changes nothing.
std::vector<TokenSpan> SentencePieceTokenizer::EncodeSpans(std::string_view text,
                                                           const std::vector<TextRange>& literal,
                                                           bool /*want_offsets*/) const {
  const size_t bad = ti::FindInvalidUtf8(text);
  if (bad != std::string_view::npos) {
    throw Unprocessable("input is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
  }
  std::vector<TokenSpan> out;
  size_t seg_start = 0, i = 0;
  // sentencepiece would read "<s>" as plain characters; cut control pieces out first,
  // as HF's Llama/Mistral tokenizers do.
  ti::LiteralCursor literal_at(literal);
  while (i < text.size()) {
    int32_t hit = -1;
    for (int32_t id : specials_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      if (literal_at.Overlaps(i, i + bytes_[id].size())) continue;
      if (text.compare(i, bytes_[id].size(), bytes_[id]) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    EncodeSegment(text.substr(seg_start, i - seg_start), seg_start, &out);
    out.push_back({hit, i, i + bytes_[hit].size()});
    i += bytes_[hit].size();
    seg_start = i;
  }
  EncodeSegment(text.substr(seg_start), seg_start, &out);
  return out;
}

void SentencePieceTokenizer::EncodeSegment(std::string_view seg, size_t base,
                                           std::vector<TokenSpan>* out) const {
  if (seg.empty()) return;
  std::vector<SpmPiece> pieces;
  std::string error;
  if (!Spm().encode(model_, std::string(seg), &pieces, &error)) {
    throw Unprocessable("sentencepiece could not encode the input: " + error);
  }
  for (const auto& p : pieces) out->push_back({p.id, base + p.begin, base + p.end});
}

std::string SentencePieceTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= VocabSize()) throw Unprocessable("unknown token id " + std::to_string(id));
  return bytes_[id];
}

std::optional<int32_t> SentencePieceTokenizer::TokenToId(std::string_view token) const {
  const std::string piece(token);
  const int id = Spm().piece_to_id(model_, piece);
  // PieceToId answers unk for anything it does not know.
  if (id < 0 || Spm().id_to_piece(model_, id) != piece) return std::nullopt;
  return id;
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < VocabSize() && special_[id];
}

void SentencePieceTokenizer::AppendDecoded(int32_t id, bool at_start, std::string* out) const {
  const std::string bytes = TokenBytes(id);
  // sentencepiece drops the dummy-prefix space of the first piece only.
  if (at_start && dummy_prefix_ && !special_[id] && !byte_piece_[id] && !bytes.empty() &&
      bytes[0] == ' ') {
    out->append(bytes, 1, std::string::npos);
  } else {
    out->append(bytes);
  }
}

}  // namespace gritserve
