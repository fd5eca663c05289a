#include "gritserve/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "gritserve/common/error.h"
#include "gritserve/tokenizer/text_util.h"

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

SentencePieceTokenizer::SentencePieceTokenizer()
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::FromFile(const std::string& path) {
  std::unique_ptr<SentencePieceTokenizer> tok(new SentencePieceTokenizer());
  const auto status = tok->sp_->Load(path);
  if (!status.ok())
    throw LoadError("cannot load sentencepiece model " + path + ": " + status.ToString());
  const int n = tok->sp_->GetPieceSize();
  if (n <= 0) throw LoadError("sentencepiece model " + path + " has no pieces");
  tok->bytes_.resize(n);
  tok->special_.assign(n, false);
  tok->byte_piece_.assign(n, false);
  for (int id = 0; id < n; ++id) {
    const std::string& piece = tok->sp_->IdToPiece(id);
    if (tok->sp_->IsByte(id)) {
      // Byte pieces are spelled <0xXX>.
      tok->bytes_[id] =
          std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
      tok->byte_piece_[id] = true;
    } else if (tok->sp_->IsControl(id) || tok->sp_->IsUnknown(id)) {
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
  const auto probe = tok->sp_->EncodeAsPieces("x");
  tok->dummy_prefix_ = !probe.empty() && probe[0].compare(0, 3, kSpaceSymbol) == 0;
  const int bos = tok->sp_->bos_id(), eos = tok->sp_->eos_id(), pad = tok->sp_->pad_id();
  if (bos >= 0) tok->bos_id_ = bos;
  if (eos >= 0) tok->eos_id_ = eos;
  if (pad >= 0) tok->pad_id_ = pad;
  // Llama-2 / Mistral convention; tokenizer_config.json may override.
  tok->add_bos_ = bos >= 0;
  return tok;
}

void SentencePieceTokenizer::ApplyConfig(const std::string& dir) { ApplyTokenizerConfig(dir); }

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text,
                                                    bool parse_special) const {
  std::vector<int32_t> ids;
  for (const auto& s : EncodeWithOffsets(text, parse_special)) ids.push_back(s.id);
  return ids;
}

std::vector<TokenSpan> SentencePieceTokenizer::EncodeWithOffsets(std::string_view text,
                                                                 bool parse_special) const {
  const size_t bad = ti::FindInvalidUtf8(text);
  if (bad != std::string_view::npos) {
    throw Unprocessable("input is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
  }
  std::vector<TokenSpan> out;
  size_t seg_start = 0, i = 0;
  // sentencepiece would read "<s>" as plain characters; cut control pieces out first,
  // as HF's Llama/Mistral tokenizers do.
  while (parse_special && i < text.size()) {
    int32_t hit = -1;
    for (int32_t id : specials_by_first_byte_[static_cast<unsigned char>(text[i])]) {
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
  const auto spt = sp_->EncodeAsImmutableProto(seg);
  for (const auto& p : spt.pieces()) {
    out->push_back({static_cast<int32_t>(p.id()), base + p.begin(), base + p.end()});
  }
}

std::string SentencePieceTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= VocabSize()) throw Unprocessable("unknown token id " + std::to_string(id));
  return bytes_[id];
}

std::optional<int32_t> SentencePieceTokenizer::TokenToId(std::string_view token) const {
  const int id = sp_->PieceToId(token);
  // PieceToId answers unk for anything it does not know.
  if (id < 0 || sp_->IdToPiece(id) != token) return std::nullopt;
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
