// The narrow interface through which the tokenizer layer uses the sentencepiece
// library. sentencepiece (Debian's build) carries its own copy of protobuf and
// exports it; loaded next to LibTorch's libprotobuf in one global symbol scope,
// the two copies bind to each other and the process crashes at start-up. So the
// library lives in a module (libgritserve_spm.so) that is dlopen'ed with
// RTLD_LOCAL | RTLD_DEEPBIND: its protobuf stays private to it.
// Both sides share one libstdc++, so std types may cross the boundary.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

namespace gritserve {

struct SpmPiece {
  int id;
  size_t begin, end;  // byte offsets into the encoded text
};

enum class SpmPieceKind {
  kNormal = 0,
  kControl = 1,
  kUnknown = 2,
  kByte = 3,
  kUserDefined = 4,
  kUnused = 5
};

struct SpmApi {
  int version;  // kSpmApiVersion of the module
  // A model from a file (is_proto false) or serialized bytes; null with *error on failure.
  void* (*load)(const std::string& source, bool is_proto, std::string* error);
  void (*destroy)(void* model);
  int (*piece_size)(const void* model);
  SpmPieceKind (*piece_kind)(const void* model, int id);
  std::string (*id_to_piece)(const void* model, int id);
  int (*piece_to_id)(const void* model, const std::string& piece);
  // which: 0 bos, 1 eos, 2 pad, 3 unk; -1 when the model has none.
  int (*special_id)(const void* model, int which);
  bool (*encode)(const void* model, const std::string& text, std::vector<SpmPiece>* out,
                 std::string* error);
  // Trains a model on in-memory sentences; the serialized model goes to *model_proto.
  bool (*train)(const std::unordered_map<std::string, std::string>& args,
                const std::vector<std::string>& sentences, std::string* model_proto,
                std::string* error);
};

constexpr int kSpmApiVersion = 1;

// Loads the module once (thread-safe) and returns its table. Search order: the
// GRITSERVE_SPM_MODULE environment variable (a file), the executable's folder,
// its ../lib/gritserve, then the build tree. Throws LoadError when not found.
const SpmApi& Spm();

}  // namespace gritserve
