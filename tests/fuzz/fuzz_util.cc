#include "fuzz_util.h"

#include <unistd.h>

#include <filesystem>

namespace gritserve::fuzz {

std::string ScratchDir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("gritserve-fuzz-" + name + "-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace gritserve::fuzz
