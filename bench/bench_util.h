// Helpers shared by the benchmark programs.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine_flags.h"

namespace gritserve::bench {

// Deterministic token ids in [0, vocab) (xorshift; the same on every machine).
inline std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 7;
  for (auto& id : ids) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    id = static_cast<int32_t>(x % static_cast<uint64_t>(vocab));
  }
  return ids;
}

// The Qwen2.5-0.5B-shape checkpoint in the temp directory, generated on first
// use, with weights stored as `dtype`: "bf16" (the default, as Qwen2.5-0.5B is
// published, and so as the server holds and computes a real download) or "f32".
inline std::string DefaultBenchModel(const std::string& dtype = "bf16") {
  if (dtype != "bf16" && dtype != "f32") throw std::invalid_argument("checkpoint dtype " + dtype);
  const std::string name =
      dtype == "f32" ? "gritserve-bench-qwen2.5-0.5b" : "gritserve-bench-qwen2.5-0.5b-bf16";
  const std::string dir = (std::filesystem::temp_directory_path() / name).string();
  if (!std::filesystem::exists(dir + "/config.json")) {
    std::cerr << "generating the Qwen2.5-0.5B-shape checkpoint (" << dtype << ") in " << dir
              << "\n";
    CheckpointSpec spec = CheckpointPreset("qwen2.5-0.5b");
    spec.dtype = dtype == "f32" ? DType::kF32 : DType::kBF16;
    WriteCheckpoint(dir, spec);
  }
  return dir;
}

// The benchmarks' flags: the engine's (kernels the server has, one spelling)
// and --checkpoint-dtype; without --model they generate the 0.5B shape.
struct ModelOptions {
  EngineOptions engine;
  std::string checkpoint_dtype = "bf16";

  void Add(CLI::App& app) {
    AddEngineFlags(app, engine, ModelFlag::kOptional,
                   "model directory (default: generate the 0.5B shape)");
    app.add_option("--checkpoint-dtype", checkpoint_dtype,
                   "without --model: the generated checkpoint's stored dtype, bf16 (as Qwen2.5 "
                   "is published) or f32")
        ->check(CLI::IsMember({"bf16", "f32"}))
        ->capture_default_str();
  }
  // The engine options after parsing, with the model directory filled in.
  EngineOptions Resolved() const {
    EngineOptions o = engine;
    if (o.model_dir.empty()) o.model_dir = DefaultBenchModel(checkpoint_dtype);
    return o;
  }
};

// Resident memory now and at its peak, in bytes (Linux: /proc and getrusage).
// Read right after loading, "now" is what the model costs to hold.
inline int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}
inline int64_t PeakResidentBytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;  // reported in KiB
}

}  // namespace gritserve::bench
