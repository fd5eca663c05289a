#include "gritserve/model/weights.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"
#include "gritserve/kernels/host_memory.h"
#include "gritserve/model/safetensors.h"
#include "gritserve/model/tensor_names.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// The shard files named by the index, in a stable order.
std::vector<std::string> ShardsFromIndex(const fs::path& dir) {
  const std::string index_path = (dir / kIndexFile).string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw LoadError("cannot read " + index_path);
  std::stringstream ss;
  ss << in.rdbuf();
  json index;
  try {
    index = json::parse(ss.str());
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number overflow
    throw LoadError(index_path + ": not valid JSON: " + e.what());
  }
  const json* weight_map = JsonFields::File(index, index_path).Find("weight_map");
  if (weight_map == nullptr || !weight_map->is_object()) {
    throw LoadError(index_path + ": missing object 'weight_map'");
  }
  std::set<std::string> files;
  for (const auto& [name, file] : weight_map->items()) {
    if (!file.is_string()) {
      throw LoadError(index_path + ": weight_map entry for '" + name + "' is not a file name");
    }
    const std::string f = file.get<std::string>();
    // The index is data from the checkpoint: keep it from naming files outside DIR.
    if (f.empty() || f.find('/') != std::string::npos || f == "..") {
      throw LoadError(index_path + ": weight_map names an invalid file '" + f + "'");
    }
    files.insert(f);
  }
  if (files.empty()) throw LoadError(index_path + ": 'weight_map' is empty");
  std::vector<std::string> paths;
  for (const std::string& f : files) paths.push_back((dir / f).string());
  return paths;
}

std::vector<std::string> WeightFiles(const std::string& dir_str) {
  const fs::path dir(dir_str);
  if (!fs::is_directory(dir)) throw LoadError("checkpoint directory not found: " + dir_str);
  if (fs::is_regular_file(dir / kSingleFile)) return {(dir / kSingleFile).string()};
  if (fs::is_regular_file(dir / kIndexFile)) return ShardsFromIndex(dir);
  std::vector<std::string> found;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".safetensors") {
      found.push_back(e.path().string());
    }
  }
  if (found.empty()) throw LoadError("no .safetensors weights in " + dir_str);
  if (found.size() > 1) {
    throw LoadError("several .safetensors files in " + dir_str + " but no " + kIndexFile +
                    " saying which to use");
  }
  return found;
}

// Copies a mapped tensor out of the file, converting on the way.
// Returns a contiguous tensor of view.shape, `dtype`, on `device`, owning its memory.
at::Tensor Materialize(const TensorView& view, at::ScalarType dtype, const at::Device& device) {
  const at::ScalarType src_type = ToScalarType(view.dtype);
  // from_blob needs element alignment; files padded as HF does always are, hand-made ones may
  // not be, and a misaligned one is copied to an aligned buffer first.
  const bool aligned = reinterpret_cast<uintptr_t>(view.data) % DTypeSize(view.dtype) == 0;
  at::Tensor src;
  if (aligned) {
    src = at::from_blob(const_cast<void*>(view.data), view.shape, at::TensorOptions(src_type));
  } else {
    src = at::empty(view.shape, at::TensorOptions(src_type));
    std::memcpy(src.data_ptr(), view.data, view.nbytes);
  }
  // Always a copy: the mapping is unmapped when this function's caller returns. BF16 -> F32
  // goes through TensorIterator's vectorised, multi-threaded copy kernel. CPU weights land in
  // huge-page memory, since every token streams them.
  if (device.is_cpu()) return StreamedWeightCopy(src, dtype);
  return src.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
}

// Drops a copied tensor's pages of the read-only file mapping from this
// process's RSS, so that loading peaks near the size of the model, not twice
// it. A page shared with a neighbour that is still to be copied is simply
// read again from the page cache.
void ReleaseMappedPages(const TensorView& view) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(view.data) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(view.data) + view.nbytes;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// Every tensor of a checkpoint's files, still mapped.
struct MappedTensors {
  std::vector<std::unique_ptr<SafeTensorsFile>> files;
  std::map<std::string, const TensorView*> views;  // sorted, so errors are deterministic
  std::map<std::string, std::string> file_of;
};

MappedTensors MapTensors(const std::string& dir) {
  MappedTensors m;
  for (const std::string& path : WeightFiles(dir)) {
    if (!fs::is_regular_file(path)) throw LoadError("weight file not found: " + path);
    m.files.push_back(SafeTensorsFile::Open(path));
    for (const auto& [name, view] : m.files.back()->tensors()) {
      auto [it, inserted] = m.views.emplace(name, &view);
      if (!inserted) {
        throw LoadError("tensor '" + name + "' appears in both " + m.file_of[name] + " and " +
                        path);
      }
      m.file_of[name] = path;
    }
  }
  return m;
}

// Missing tensors are collected so that one message says how many there are.
void CheckExpectedPresent(const std::vector<TensorSpec>& specs, MappedTensors& m,
                          const std::string& dir) {
  std::vector<std::string> missing;
  for (const TensorSpec& spec : specs) {
    auto it = m.views.find(spec.name);
    if (it == m.views.end()) {
      missing.push_back(spec.name);
    } else if (it->second->shape != spec.shape) {
      throw LoadError("tensor '" + spec.name + "' has shape " + ShapeString(it->second->shape) +
                      ", expected " + ShapeString(spec.shape) + " (in " + m.file_of[spec.name] +
                      ")");
    }
  }
  if (!missing.empty()) {
    std::string more;
    if (missing.size() > 1) more = " (and " + std::to_string(missing.size() - 1) + " more)";
    throw LoadError("missing tensor '" + missing[0] + "'" + more + " in checkpoint " + dir);
  }
}

void CheckNoneUnexpected(const std::vector<TensorSpec>& specs, MappedTensors& m,
                         const ModelConfig& config) {
  std::set<std::string> expected_names;
  for (const TensorSpec& spec : specs) expected_names.insert(spec.name);
  for (const auto& [name, view] : m.views) {
    if (expected_names.count(name)) continue;
    if (tensor_names::IsRotaryInvFreq(name) ||
        (name == tensor_names::kLmHead && config.tie_word_embeddings)) {
      spdlog::debug("ignoring tensor '{}' in {}", name, m.file_of[name]);
      continue;
    }
    throw LoadError("unexpected tensor '" + name + "' in " + m.file_of[name] + " (not used by a " +
                    config.architecture_name + " with this config)");
  }
}

// The loader's choice of dtype for each tensor.
struct TargetTypes {
  at::ScalarType dtype;
  at::ScalarType matrix_dtype;
  bool keep_bfloat16_matrices;
};

struct CopyTotals {
  uint64_t file_bytes = 0;
  int64_t params = 0;
  int64_t tensors = 0;
  int64_t kept = 0;  // BF16 matrices kept in bfloat16
};

}  // namespace

struct WeightSource::Impl {
  // Mapped checkpoint (first constructor) ...
  std::string dir;
  MappedTensors mapped;
  TargetTypes types{at::kFloat, at::kFloat, false};
  at::Device device{at::kCPU};
  std::set<std::string> expected;  // names not yet taken
  // ... or tensors in memory (second).
  WeightMap in_memory;
  CopyTotals totals;
  std::chrono::steady_clock::time_point opened = std::chrono::steady_clock::now();

  at::Tensor Copy(const std::string& name) {
    const TensorView& view = *mapped.views.at(name);
    at::ScalarType to = types.dtype;
    if (IsMatrixWeight(name)) {
      const bool keep = types.keep_bfloat16_matrices && view.dtype == DType::kBF16;
      to = keep ? at::kBFloat16 : types.matrix_dtype;
      totals.kept += keep ? 1 : 0;
    }
    at::Tensor t = Materialize(view, to, device);
    ReleaseMappedPages(view);
    totals.file_bytes += view.nbytes;
    totals.params += view.numel();
    totals.tensors += 1;
    return t;
  }
};

WeightSource::WeightSource(const std::string& dir, const ModelConfig& config, at::ScalarType dtype,
                           const at::Device& device, at::ScalarType matrix_dtype,
                           bool keep_bfloat16_matrices)
    : impl_(std::make_unique<Impl>()) {
  if (matrix_dtype == at::ScalarType::Undefined) matrix_dtype = dtype;
  impl_->dir = dir;
  impl_->mapped = MapTensors(dir);
  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  CheckExpectedPresent(specs, impl_->mapped, dir);
  CheckNoneUnexpected(specs, impl_->mapped, config);
  for (const TensorSpec& spec : specs) impl_->expected.insert(spec.name);
  impl_->types = {dtype, matrix_dtype, keep_bfloat16_matrices};
  impl_->device = device;
}

WeightSource::WeightSource(WeightMap tensors) : impl_(std::make_unique<Impl>()) {
  impl_->in_memory = std::move(tensors);
}

WeightSource::WeightSource(WeightSource&&) noexcept = default;
WeightSource& WeightSource::operator=(WeightSource&&) noexcept = default;
WeightSource::~WeightSource() = default;

at::Tensor WeightSource::Take(const std::string& name) {
  Impl& m = *impl_;
  if (m.expected.erase(name) == 1) return m.Copy(name);
  auto it = m.in_memory.find(name);
  if (it == m.in_memory.end()) throw LoadError("missing tensor '" + name + "'");
  at::Tensor t = std::move(it->second);
  m.in_memory.erase(it);
  return t;
}

std::string WeightSource::Summary() const {
  const Impl& m = *impl_;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - m.opened).count();
  const TargetTypes& t = m.types;
  const std::string types =
      m.totals.kept > 0 ? " (" + std::to_string(m.totals.kept) + " BF16 matrices kept in bfloat16)"
      : t.matrix_dtype == t.dtype
          ? ""
          : std::string(" (matrices ") + c10::toString(t.matrix_dtype) + ")";
  return fmt::format(
      "{} tensors ({} parameters, {:.1f} MB in {} file(s)) from {} as {}{} on {} in {:.2f} s",
      m.totals.tensors, m.totals.params, m.totals.file_bytes / 1e6, m.mapped.files.size(), m.dir,
      c10::toString(t.dtype), types, m.device.str(), seconds);
}

WeightMap LoadWeights(const std::string& dir, const ModelConfig& config, at::ScalarType dtype,
                      const at::Device& device, at::ScalarType matrix_dtype,
                      bool keep_bfloat16_matrices) {
  WeightSource source(dir, config, dtype, device, matrix_dtype, keep_bfloat16_matrices);
  WeightMap weights;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    weights.emplace(spec.name, source.Take(spec.name));
  }
  spdlog::info("loaded {}", source.Summary());
  return weights;
}

at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
  }
  throw Error(ErrorKind::kInternal, "unknown DType");
}

}  // namespace gritserve
