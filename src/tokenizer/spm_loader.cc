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

const SpmApi* LoadModule(std::string* why) {
  for (const std::string& path : Candidates()) {
    if (!std::filesystem::exists(path)) continue;
    // RTLD_LOCAL keeps the module's protobuf out of the global scope; DEEPBIND
    // makes sentencepiece resolve its protobuf symbols to its own copy.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      *why += std::string("\n  ") + path + ": " + dlerror();
      continue;
    }
    using Entry = const SpmApi* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(handle, "gritserve_spm_api"));
    const SpmApi* api = entry != nullptr ? entry() : nullptr;
    if (api == nullptr || api->version != kSpmApiVersion) {
      *why += "\n  " + path + ": not a compatible gritserve sentencepiece module";
      continue;
    }
    spdlog::debug("sentencepiece module: {}", path);
    return api;
  }
  return nullptr;
}

}  // namespace

const SpmApi& Spm() {
  static std::once_flag once;
  static const SpmApi* api = nullptr;
  static std::string why;
  std::call_once(once, [] { api = LoadModule(&why); });
  if (api == nullptr) {
    throw LoadError(std::string("cannot load the sentencepiece module ") + kModuleName +
                    " (set GRITSERVE_SPM_MODULE to its path)" + why);
  }
  return *api;
}

}  // namespace gritserve
