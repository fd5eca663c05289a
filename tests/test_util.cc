#include "test_util.h"

#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace gritserve::testing {

std::string FixturesDir() {
  std::string dir = GRITSERVE_FIXTURES_DIR;
  if (!std::filesystem::is_directory(dir)) {
    throw std::runtime_error("test fixtures not found at " + dir);
  }
  return dir;
}

std::string MakeTempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  std::filesystem::path p =
      std::filesystem::path(GRITSERVE_TEST_TMP) /
      (tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

std::string BinaryPath() { return GRITSERVE_BINARY; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t ProcStatusBytes(const std::string& key, pid_t pid) {
  std::ifstream in("/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string k;
    int64_t kib = 0;
    if (words >> k >> kib && k == key) return kib * 1024;
  }
  return -1;
}

bool ResetPeakResident() {
  ::malloc_trim(0);
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace gritserve::testing
