// The narrow interface through which the tokenizer layer uses the sentencepiece
// library. sentencepiece (Debian's build) carries its own copy of protobuf and
// exports it; loaded next to LibTorch's libprotobuf in one symbol scope, the two
// copies bind to each other and the process crashes at start-up.
//
// So the library lives in a module (libgritserve_spm.so) that spm_loader.cc
// loads with dlmopen into a link-map namespace of its own: the module,
// sentencepiece and their own copies of libstdc++ and libc resolve symbols only
// among themselves, and LibTorch's protobuf is not in sight. (This replaced
// dlopen with RTLD_DEEPBIND, which AddressSanitizer and ThreadSanitizer refuse:
// DEEPBIND binds the library's malloc to libc's past the sanitizer's, and it
// still left the module's other libraries free to bind into the process.)
//
// Two heaps, one per namespace, follow from that: memory must never be
// allocated on one side and freed on the other. The module's table
// (SpmModuleApi) therefore takes only plain pointers and sizes, and hands every
// result back through callbacks (SpmSink, SpmPieceSink) that run the caller's
// code, which copies into its own containers. No exception crosses it either.
// spm_loader.cc wraps that table into SpmApi, the C++ interface the tokenizer
// uses.
#pragma once

#include <cstddef>
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

// ---- The module's side (plain data only; see above) ----

// Receives bytes; `append` is the caller's function and may be called repeatedly.
struct SpmSink {
  void* ctx;
  void (*append)(void* ctx, const char* data, size_t size);
};
// Receives one piece of an encoding at a time.
struct SpmPieceSink {
  void* ctx;
  void (*add)(void* ctx, int id, size_t begin, size_t end);
};

struct SpmModuleApi {
  int version;  // kSpmModuleApiVersion of the module
  void* (*load)(const char* source, size_t size, bool is_proto, SpmSink error);
  void (*destroy)(void* model);
  int (*piece_size)(const void* model);
  int (*piece_kind)(const void* model, int id);  // an SpmPieceKind
  void (*id_to_piece)(const void* model, int id, SpmSink out);
  int (*piece_to_id)(const void* model, const char* piece, size_t size);
  int (*special_id)(const void* model, int which);
  bool (*encode)(const void* model, const char* text, size_t size, SpmPieceSink out,
                 SpmSink error);
  // args: n_args key/value strings (NUL-terminated); sentences: n pointers and sizes.
  bool (*train)(const char* const* keys, const char* const* values, size_t n_args,
                const char* const* sentences, const size_t* sizes, size_t n, SpmSink model_proto,
                SpmSink error);
};

constexpr int kSpmModuleApiVersion = 2;

// Loads the module once (thread-safe) and returns its table. Search order: the
// GRITSERVE_SPM_MODULE environment variable (a file), the executable's folder,
// its ../lib/gritserve, then the build tree. Throws LoadError when not found.
const SpmApi& Spm();

}  // namespace gritserve
