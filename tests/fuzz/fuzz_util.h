// Shared by the fuzz targets. Each target defines LLVMFuzzerTestOneInput and,
// where it needs a model or a tokenizer, loads it once per process.
//
// The oracle: a target returns normally for every input, whether the code under
// test accepted it or refused it with gritserve's typed Error (a clear 4xx on
// the server). A crash, a sanitizer report, a failed Check, or any other
// exception escaping (the server would answer 500) is a finding.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace gritserve::fuzz {

// A fixture under tests/fixtures.
inline std::string Fixture(const std::string& name) {
  return std::string(GRITSERVE_FIXTURES_DIR) + "/" + name;
}

// Aborts (a finding) when an invariant the code promises does not hold.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

// A private directory for this process's scratch files, removed at exit.
std::string ScratchDir(const std::string& name);

}  // namespace gritserve::fuzz
