#include "gritserve/common/memory_info.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace gritserve {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::optional<int64_t> ParseInt(const std::string& s) {
  try {
    size_t used = 0;
    const long long v = std::stoll(s, &used);
    return v >= 0 ? std::optional<int64_t>(v) : std::nullopt;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The value of `key` in "key value[ unit]" lines, or nullopt.
std::optional<int64_t> Field(const std::string& text, const std::string& key) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string k;
    int64_t v = 0;
    if (words >> k >> v && k == key) return v;
  }
  return std::nullopt;
}

}  // namespace

std::optional<int64_t> AvailableMemoryBytes(const std::string& meminfo,
                                            const std::string& cgroup_max,
                                            const std::string& cgroup_current,
                                            const std::string& cgroup_stat) {
  std::optional<int64_t> avail;
  if (auto kib = Field(meminfo, "MemAvailable:")) avail = *kib * 1024;
  // cgroup v2: memory.max is "max" when unlimited.
  const auto limit = ParseInt(cgroup_max), used = ParseInt(cgroup_current);
  if (limit && used) {
    const int64_t cache = Field(cgroup_stat, "inactive_file").value_or(0);
    const int64_t left = std::max<int64_t>(0, *limit - std::max<int64_t>(0, *used - cache));
    avail = avail ? std::min(*avail, left) : left;
  }
  return avail;
}

std::optional<int64_t> AvailableMemoryBytes() {
  return AvailableMemoryBytes(ReadAll("/proc/meminfo"), ReadAll("/sys/fs/cgroup/memory.max"),
                              ReadAll("/sys/fs/cgroup/memory.current"),
                              ReadAll("/sys/fs/cgroup/memory.stat"));
}

}  // namespace gritserve
