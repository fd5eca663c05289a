#include <dlfcn.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "gritserve/common/error.h"
#include "spm_api.h"

namespace gritserve {
namespace {

constexpr char kModuleName[] = "libgritserve_spm.so";

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("GRITSERVE_SPM_MODULE"); env != nullptr && *env != '\0') {
    out.push_back(env);
  }
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back((exe.parent_path() / kModuleName).string());
    out.push_back((exe.parent_path().parent_path() / "lib" / "gritserve" / kModuleName).string());
    out.push_back((exe.parent_path().parent_path() / kModuleName).string());  // build/tests/x
  }
#ifdef GRITSERVE_SPM_MODULE_DIR
  out.push_back(std::string(GRITSERVE_SPM_MODULE_DIR) + "/" + kModuleName);
#endif
  return out;
}

const SpmModuleApi* LoadModule(std::string* why) {
  for (const std::string& path : Candidates()) {
    if (!std::filesystem::exists(path)) continue;
    // A namespace of its own (spm_api.h): nothing the module or sentencepiece
    // looks up can bind to the process's libraries, LibTorch's protobuf above all.
    void* handle = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      *why += std::string("\n  ") + path + ": " + dlerror();
      continue;
    }
    using Entry = const SpmModuleApi* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(handle, "gritserve_spm_api"));
    const SpmModuleApi* api = entry != nullptr ? entry() : nullptr;
    if (api == nullptr || api->version != kSpmModuleApiVersion) {
      *why += "\n  " + path + ": not a compatible gritserve sentencepiece module";
      dlclose(handle);
      continue;
    }
    spdlog::debug("sentencepiece module: {}", path);
    return api;
  }
  return nullptr;
}

// The adapter from the module's plain table to SpmApi: every result is copied
// into this side's containers by these callbacks, which run here.
const SpmModuleApi* module_api = nullptr;

SpmSink Into(std::string* s) {
  return {s, [](void* ctx, const char* data, size_t size) {
            static_cast<std::string*>(ctx)->append(data, size);
          }};
}

void* Load(const std::string& source, bool is_proto, std::string* error) {
  return module_api->load(source.data(), source.size(), is_proto, Into(error));
}
void Destroy(void* model) { module_api->destroy(model); }
int PieceSize(const void* model) { return module_api->piece_size(model); }
SpmPieceKind PieceKind(const void* model, int id) {
  return static_cast<SpmPieceKind>(module_api->piece_kind(model, id));
}
std::string IdToPiece(const void* model, int id) {
  std::string out;
  module_api->id_to_piece(model, id, Into(&out));
  return out;
}
int PieceToId(const void* model, const std::string& piece) {
  return module_api->piece_to_id(model, piece.data(), piece.size());
}
int SpecialId(const void* model, int which) { return module_api->special_id(model, which); }

bool Encode(const void* model, const std::string& text, std::vector<SpmPiece>* out,
            std::string* error) {
  const SpmPieceSink sink = {out, [](void* ctx, int id, size_t begin, size_t end) {
                               static_cast<std::vector<SpmPiece>*>(ctx)->push_back({id, begin, end});
                             }};
  return module_api->encode(model, text.data(), text.size(), sink, Into(error));
}

bool Train(const std::unordered_map<std::string, std::string>& args,
           const std::vector<std::string>& sentences, std::string* model_proto,
           std::string* error) {
  std::vector<const char*> keys, values, texts;
  std::vector<size_t> sizes;
  for (const auto& [k, v] : args) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  for (const auto& s : sentences) {
    texts.push_back(s.data());
    sizes.push_back(s.size());
  }
  return module_api->train(keys.data(), values.data(), keys.size(), texts.data(), sizes.data(),
                    texts.size(), Into(model_proto), Into(error));
}

const SpmApi kApi = {Load,      Destroy,   PieceSize, PieceKind, IdToPiece,
                     PieceToId, SpecialId, Encode,    Train};

}  // namespace

const SpmApi& Spm() {
  static std::once_flag once;
  static std::string why;
  std::call_once(once, [] { module_api = LoadModule(&why); });
  if (module_api == nullptr) {
    throw LoadError(std::string("cannot load the sentencepiece module ") + kModuleName +
                    " (set GRITSERVE_SPM_MODULE to its path)" + why);
  }
  return kApi;
}

}  // namespace gritserve
