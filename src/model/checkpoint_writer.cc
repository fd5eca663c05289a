#include "gritserve/model/checkpoint_writer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gritserve/common/error.h"
#include "gritserve/model/tensor_names.h"
#include "gritserve/model/weights.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Seeding per tensor name (not per position in the file) keeps the values independent of
// the order and sharding the tensors are written in.
uint64_t TensorSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return SplitMix64(SplitMix64(seed) ^ h);
}

const char* TorchDtypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
  }
  return "float32";
}

// Random values for one tensor, drawn in float32 and converted to the file's dtype.
// Returns a contiguous CPU tensor of `shape` in ToScalarType(dtype).
at::Tensor RandomTensor(const TensorSpec& spec, const RandomWeightsOptions& options) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(TensorSeed(options.seed, spec.name));
  at::Tensor t = at::randn(spec.shape, gen, at::TensorOptions(at::kFloat));
  if (tensor_names::IsNormWeight(spec.name)) {
    // Around 1 but not 1, so a decoder that skips a norm's weight gets different outputs.
    t.mul_(0.1f).add_(1.0f);
  } else if (tensor_names::IsBias(spec.name)) {
    t.mul_(0.02f);
  } else {
    t.mul_(options.init_std);
  }
  return t.to(ToScalarType(options.dtype)).contiguous();
}

uint64_t SpecBytes(const TensorSpec& spec, DType dtype) {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : spec.shape) n *= static_cast<uint64_t>(d);
  return n;
}

void WriteTextFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw LoadError("cannot write " + path.string());
}

std::string GenerationConfigText(const ModelConfig& config) {
  json g = json::object();
  if (config.bos_token_id) g["bos_token_id"] = *config.bos_token_id;
  if (config.eos_token_ids.size() == 1) {
    g["eos_token_id"] = config.eos_token_ids[0];
  } else if (!config.eos_token_ids.empty()) {
    g["eos_token_id"] = config.eos_token_ids;
  }
  return g.dump(2) + "\n";
}

// Greedy packing in ExpectedTensors order, as HF's save_pretrained does.
std::vector<std::vector<TensorSpec>> PlanShards(const std::vector<TensorSpec>& specs,
                                                const RandomWeightsOptions& options) {
  if (!options.shard) return {specs};
  uint64_t total = 0;
  for (const TensorSpec& s : specs) total += SpecBytes(s, options.dtype);
  const uint64_t max_bytes = options.shard_max_bytes > 0
                                 ? static_cast<uint64_t>(options.shard_max_bytes)
                                 : (total + 1) / 2;
  std::vector<std::vector<TensorSpec>> shards(1);
  uint64_t current = 0;
  for (const TensorSpec& s : specs) {
    const uint64_t bytes = SpecBytes(s, options.dtype);
    if (!shards.back().empty() && current + bytes > max_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(s);
    current += bytes;
  }
  return shards;
}

std::string ShardName(size_t index, size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buf;
}

}  // namespace

void WriteRandomCheckpoint(const std::string& dir, const ModelConfig& config,
                           const RandomWeightsOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const fs::path base(dir);
  std::error_code ec;
  fs::create_directories(base, ec);
  if (ec) throw LoadError("cannot create " + dir + ": " + ec.message());

  ModelConfig written = config;
  written.torch_dtype = TorchDtypeName(options.dtype);
  WriteTextFile(base / "config.json", written.ToJsonText());
  WriteTextFile(base / "generation_config.json", GenerationConfigText(config));

  const std::vector<std::vector<TensorSpec>> shards = PlanShards(ExpectedTensors(config), options);
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  json weight_map = json::object();
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file_name = options.shard ? ShardName(i, shards.size()) : "model.safetensors";
    std::vector<TensorLayout> layout;
    for (const TensorSpec& s : shards[i]) layout.push_back({s.name, options.dtype, s.shape});
    SafeTensorsWriter writer((base / file_name).string(), std::move(layout), metadata);
    for (const TensorSpec& s : shards[i]) {
      const at::Tensor t = RandomTensor(s, options);
      writer.Append(t.data_ptr(), t.nbytes());
      weight_map[s.name] = file_name;
    }
    writer.Finish();
    total_bytes += writer.data_bytes();
  }
  if (options.shard) {
    json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    WriteTextFile(base / "model.safetensors.index.json", index.dump(2) + "\n");
  }

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info(
      "wrote random {} checkpoint to {}: {} parameters, {:.1f} MB in {} file(s), "
      "{:.2f} s",
      TorchDtypeName(options.dtype), dir, config.NumParameters(), total_bytes / 1e6, shards.size(),
      seconds);
}

}  // namespace gritserve
