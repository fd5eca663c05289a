// How much memory this process may still take, for choosing a precision that fits.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace gritserve {

// MemAvailable from /proc/meminfo, capped by what the cgroup v2 limit leaves
// when the process runs under one (docker --memory): memory.max minus
// memory.current, not counting the inactive page cache (memory.stat
// inactive_file), which the kernel reclaims first. nullopt where neither can
// be read.
std::optional<int64_t> AvailableMemoryBytes();

// The same from given file contents (empty: not readable), for tests.
std::optional<int64_t> AvailableMemoryBytes(const std::string& meminfo,
                                            const std::string& cgroup_max,
                                            const std::string& cgroup_current,
                                            const std::string& cgroup_stat);

}  // namespace gritserve
