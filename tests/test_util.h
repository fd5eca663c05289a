// Helpers shared by the tests: fixture paths and scratch directories.
#pragma once

#include <string>

namespace gritserve::testing {

// tests/fixtures (absolute). Tests that need it fail loudly if it is absent.
std::string FixturesDir();
// A fresh, empty directory under the build tree, unique per call.
std::string MakeTempDir(const std::string& tag);
// Path of the built gritserve binary.
std::string BinaryPath();
std::string ReadFile(const std::string& path);

}  // namespace gritserve::testing
