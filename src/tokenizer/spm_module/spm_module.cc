// libgritserve_spm.so: the only code that links sentencepiece (see spm_api.h).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "../spm_api.h"

namespace gritserve {
namespace {

using Processor = sentencepiece::SentencePieceProcessor;

const Processor& P(const void* m) { return *static_cast<const Processor*>(m); }

void* Load(const std::string& source, bool is_proto, std::string* error) {
  auto* p = new Processor();
  const auto status = is_proto ? p->LoadFromSerializedProto(source) : p->Load(source);
  if (!status.ok()) {
    *error = status.ToString();
    delete p;
    return nullptr;
  }
  return p;
}

void Destroy(void* m) { delete static_cast<Processor*>(m); }
int PieceSize(const void* m) { return P(m).GetPieceSize(); }

SpmPieceKind Kind(const void* m, int id) {
  const Processor& p = P(m);
  if (p.IsByte(id)) return SpmPieceKind::kByte;
  if (p.IsControl(id)) return SpmPieceKind::kControl;
  if (p.IsUnknown(id)) return SpmPieceKind::kUnknown;
  return SpmPieceKind::kNormal;
}

std::string IdToPiece(const void* m, int id) { return P(m).IdToPiece(id); }
int PieceToId(const void* m, const std::string& piece) { return P(m).PieceToId(piece); }

int SpecialId(const void* m, int which) {
  switch (which) {
    case 0:
      return P(m).bos_id();
    case 1:
      return P(m).eos_id();
    case 2:
      return P(m).pad_id();
    case 3:
      return P(m).unk_id();
  }
  return -1;
}

bool Encode(const void* m, const std::string& text, std::vector<SpmPiece>* out,
            std::string* error) {
  sentencepiece::ImmutableSentencePieceText spt;
  const auto status = P(m).Encode(text, spt.mutable_proto());
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  for (const auto& piece : spt.pieces()) {
    out->push_back({static_cast<int>(piece.id()), piece.begin(), piece.end()});
  }
  return true;
}

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& s) : s_(s) {}
  bool done() const override { return i_ >= s_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return s_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& s_;
  size_t i_ = 0;
};

bool Train(const std::unordered_map<std::string, std::string>& args,
           const std::vector<std::string>& sentences, std::string* model_proto,
           std::string* error) {
  VectorIterator it(sentences);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, model_proto);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

const SpmApi kApi = {kSpmApiVersion, Load,      Destroy,   PieceSize, Kind,
                     IdToPiece,      PieceToId, SpecialId, Encode,    Train};

}  // namespace
}  // namespace gritserve

extern "C" __attribute__((visibility("default"))) const gritserve::SpmApi* gritserve_spm_api() {
  return &gritserve::kApi;
}
