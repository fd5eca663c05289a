// libgritserve_spm.so: the only code that links sentencepiece (see spm_api.h).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <memory>
#include <string_view>

#include "../spm_api.h"

namespace gritserve {
namespace {

using Processor = sentencepiece::SentencePieceProcessor;

const Processor& P(const void* m) { return *static_cast<const Processor*>(m); }

void Put(SpmSink sink, const std::string& s) { sink.append(sink.ctx, s.data(), s.size()); }

// Nothing may unwind into the caller's namespace (it has its own unwinder).
template <typename R, typename F>
R Guarded(SpmSink error, R failed, F f) {
  try {
    return f();
  } catch (const std::exception& e) {
    Put(error, e.what());
  } catch (...) {
    Put(error, "unknown exception in the sentencepiece module");
  }
  return failed;
}

void* Load(const char* source, size_t size, bool is_proto, SpmSink error) {
  return Guarded(error, static_cast<void*>(nullptr), [&]() -> void* {
    auto p = std::make_unique<Processor>();
    const std::string src(source, size);
    const auto status = is_proto ? p->LoadFromSerializedProto(src) : p->Load(src);
    if (!status.ok()) {
      Put(error, status.ToString());
      return nullptr;
    }
    return p.release();
  });
}

void Destroy(void* m) { delete static_cast<Processor*>(m); }
int PieceSize(const void* m) { return P(m).GetPieceSize(); }

int Kind(const void* m, int id) {
  const Processor& p = P(m);
  if (p.IsByte(id)) return static_cast<int>(SpmPieceKind::kByte);
  if (p.IsControl(id)) return static_cast<int>(SpmPieceKind::kControl);
  if (p.IsUnknown(id)) return static_cast<int>(SpmPieceKind::kUnknown);
  return static_cast<int>(SpmPieceKind::kNormal);
}

void IdToPiece(const void* m, int id, SpmSink out) { Put(out, P(m).IdToPiece(id)); }
int PieceToId(const void* m, const char* piece, size_t size) {
  return P(m).PieceToId(std::string_view(piece, size));
}

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

bool Encode(const void* m, const char* text, size_t size, SpmPieceSink out, SpmSink error) {
  return Guarded(error, false, [&] {
    sentencepiece::ImmutableSentencePieceText spt;
    const auto status = P(m).Encode(std::string_view(text, size), spt.mutable_proto());
    if (!status.ok()) {
      Put(error, status.ToString());
      return false;
    }
    for (const auto& piece : spt.pieces()) {
      out.add(out.ctx, static_cast<int>(piece.id()), piece.begin(), piece.end());
    }
    return true;
  });
}

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(std::vector<std::string> s) : s_(std::move(s)) {}
  bool done() const override { return i_ >= s_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return s_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> s_;
  size_t i_ = 0;
};

bool Train(const char* const* keys, const char* const* values, size_t n_args,
           const char* const* sentences, const size_t* sizes, size_t n, SpmSink model_proto,
           SpmSink error) {
  return Guarded(error, false, [&] {
    std::unordered_map<std::string, std::string> args;
    for (size_t i = 0; i < n_args; ++i) args[keys[i]] = values[i];
    std::vector<std::string> copied;
    copied.reserve(n);
    for (size_t i = 0; i < n; ++i) copied.emplace_back(sentences[i], sizes[i]);
    VectorIterator it(std::move(copied));
    std::string proto;
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &proto);
    if (!status.ok()) {
      Put(error, status.ToString());
      return false;
    }
    Put(model_proto, proto);
    return true;
  });
}

const SpmModuleApi kApi = {kSpmModuleApiVersion, Load,      Destroy,   PieceSize, Kind,
                           IdToPiece,            PieceToId, SpecialId, Encode,    Train};

}  // namespace
}  // namespace gritserve

extern "C" __attribute__((visibility("default"))) const gritserve::SpmModuleApi* gritserve_spm_api() {
  return &gritserve::kApi;
}
