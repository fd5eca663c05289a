#include "fuzz_util.h"

#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <vector>

namespace gritserve::fuzz {
namespace {

// Scratch folders go when the process exits (libFuzzer ends a timed run, and
// the corpus replay ends, with exit()), so runs do not pile them up in /tmp.
struct ScratchDirs {
  std::mutex mu;
  std::vector<std::filesystem::path> dirs;
  ~ScratchDirs() {
    std::error_code ignored;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ignored);
  }
};

ScratchDirs& Registry() {
  static ScratchDirs r;
  return r;
}

}  // namespace

std::string ScratchDir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("gritserve-fuzz-" + name + "-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ScratchDirs& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.dirs.push_back(dir);
  return dir.string();
}

}  // namespace gritserve::fuzz
