// Helpers shared by the tests: fixture paths, scratch directories, and the
// process memory figures the memory tests measure.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace gritserve::testing {

// tests/fixtures (absolute). Tests that need it fail loudly if it is absent.
std::string FixturesDir();
// A fresh, empty directory under the build tree, unique per call.
std::string MakeTempDir(const std::string& tag);
// Path of the built gritserve binary.
std::string BinaryPath();
std::string ReadFile(const std::string& path);

// A field of /proc/PID/status in bytes (e.g. "VmHWM:", the peak resident
// set; "VmRSS:"), for this process when pid is 0; -1 if absent.
int64_t ProcStatusBytes(const std::string& key, pid_t pid = 0);
// Resets this process's VmHWM to its current resident set (Linux: "5" to
// clear_refs), after handing the heap's free pages back (malloc_trim), so
// memory freed before a measurement is not reused unseen by it.
bool ResetPeakResident();

}  // namespace gritserve::testing
