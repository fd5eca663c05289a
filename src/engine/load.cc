// Loading a model: device and precision chosen, weights read, the front end
// and the runner built.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <thread>

#include "engine_impl.h"
#include "gritserve/common/error.h"
#include "gritserve/common/memory_info.h"
#include "gritserve/engine/engine.h"
#include "gritserve/kernels/cpu_kernels.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/kernels/quant.h"
#include "gritserve/kernels/small_gemm.h"
#include "gritserve/model/weights.h"

namespace gritserve {
namespace {

at::Device ParseDevice(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (name.rfind("cuda", 0) == 0) {
#ifdef GRITSERVE_TORCH_CUDA
    // LibTorch's CUDA backend registers itself when libtorch_cuda.so loads, and
    // ATen settles on "no CUDA" at its first CUDA query. Our binaries link it
    // with --no-as-needed; loading it by name (before that first query) covers
    // an executable linked without that flag.
    ::dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_GLOBAL);
#endif
    if (!at::hasCUDA()) {
      throw LoadError("--device " + name +
                      ": no CUDA device (CPU-only LibTorch, or no GPU/driver)");
    }
    return at::Device(name);
  }
  throw LoadError("unknown device '" + name + "' (expected cpu, cuda or cuda:N)");
}

at::ScalarType ParseDtype(const std::string& name, const at::Device& device) {
  if (name == "auto") return device.is_cpu() ? at::kFloat : at::kBFloat16;
  if (name == "float32" || name == "f32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "f16") return at::kHalf;
  throw LoadError("unknown dtype '" + name + "' (expected auto, float32, bfloat16, float16)");
}

// --weights: nothing for "bf16" (the weights as loaded), else the block format.
std::optional<quant::Format> ParseWeights(const std::string& name) {
  if (name == "bf16") return std::nullopt;
  if (name == "q8") return quant::Format::kQ8;
  if (name == "q4") return quant::Format::kQ4;
  throw LoadError("unknown --weights '" + name + "' (expected bf16, q8 or q4)");
}

// "Float", "BFloat16", or "BFloat16 matmul, Float" when only the products are bfloat16.
std::string PrecisionName(const Decoder& d) {
  if (d.matmul_dtype() == d.dtype()) return c10::toString(d.dtype());
  return std::string(c10::toString(d.matmul_dtype())) + " matmul, " + c10::toString(d.dtype());
}

std::string Gb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", static_cast<double>(bytes) / 1e9);
  return buf;
}

}  // namespace

std::string AutoCpuDtype(bool bf16_products) { return bf16_products ? "bfloat16" : "float32"; }

namespace {

// The precision a model loads and computes in.
struct Precision {
  at::ScalarType requested;  // what was asked for (auto resolved)
  at::ScalarType dtype;      // activations, norms, attention, KV cache
  // bfloat16 on a CPU with native bfloat16 kernels: the matrix products (nearly
  // all the arithmetic, and the weight bytes decode streams) run in bfloat16,
  // while norms, attention and the KV cache stay float32, where LibTorch's CPU
  // kernels are fast and the KV cache is exact.
  bool cpu_bf16_matmul;
};

// Says so with the numbers before the kernel's OOM killer does it silently.
// Quantized: 8.5 or 5 bits per weight (quant.h), the embeddings aside.
void WarnIfWeightsExceedMemory(int64_t params, at::ScalarType dtype,
                               std::optional<quant::Format> quantize) {
  const std::optional<int64_t> available = AvailableMemoryBytes();
  if (!available) return;
  const int64_t weight_bytes = !quantize ? params * (dtype == at::kFloat ? 4 : 2)
                               : *quantize == quant::Format::kQ8 ? params * 17 / 16
                                                                 : params * 5 / 8;
  if (weight_bytes <= *available) return;
  spdlog::warn("the model's {} parameters need {} as {} and {} is available{}", params,
               Gb(weight_bytes), quantize ? quant::FormatName(*quantize) : c10::toString(dtype),
               Gb(*available),
               quantize              ? ""
               : dtype == at::kFloat ? " (--dtype bfloat16 halves it, --weights q8 quarters it)"
                                     : "");
}

Precision ChoosePrecision(const EngineOptions& options, const at::Device& device, int64_t params) {
  std::string dtype_name = options.dtype;
  const std::optional<quant::Format> quantize = ParseWeights(options.weights);
  if (quantize) {
    // Quantized layers take and give float32. Where the CPU multiplies
    // bfloat16 natively their prompt-sized products may run in bfloat16, as
    // unquantized layers' do (auto picks that there too; float32 stays a flag away).
    if (!device.is_cpu()) throw LoadError("--weights " + options.weights + " runs on CPU only");
    if (dtype_name != "auto") {
      const at::ScalarType t = ParseDtype(dtype_name, device);
      if (t != at::kFloat && !(t == at::kBFloat16 && Linear::CpuBf16Available())) {
        throw LoadError("--weights " + options.weights +
                        " computes in float32, or with bfloat16 matrix products on a CPU that "
                        "has them: --dtype " +
                        dtype_name + " does not apply here");
      }
    }
  }
  if (device.is_cpu() && dtype_name == "auto") {
    dtype_name = AutoCpuDtype(Linear::CpuBf16Available());
    spdlog::info("dtype auto: {}",
                 dtype_name == "float32"
                     ? "float32 (this CPU has no native bfloat16 products)"
                     : "bfloat16 matrix products, float32 elsewhere: this CPU multiplies "
                       "bfloat16 natively, and the results stay within q8's bounds of "
                       "float32 (README); --dtype float32 computes in float32 throughout");
  }
  Precision p;
  p.requested = ParseDtype(dtype_name, device);
  if (device.is_cpu()) WarnIfWeightsExceedMemory(params, p.requested, quantize);
  p.cpu_bf16_matmul = device.is_cpu() && p.requested == at::kBFloat16 && Linear::CpuBf16Available();
  p.dtype = p.cpu_bf16_matmul ? at::kFloat : p.requested;
  if (device.is_cpu() && p.dtype != at::kFloat) {
    spdlog::warn("{} compute on CPU is far slower than float32 here", dtype_name);
  }
  if (device.is_cuda() && p.dtype == at::kFloat) {
    // float32 means float32: with TF32 allowed, cuBLAS rounds matmul inputs to
    // a 10-bit mantissa on Ampere and later (~1e-3 relative error). LibTorch's
    // default is off; this guards against an embedding application turning it
    // on. The setting is process-wide.
    at::globalContext().setAllowTF32CuBLAS(false);
    if (at::globalContext().allowTF32CuBLAS()) {
      spdlog::warn(
          "TF32 matmuls stay enabled (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE?): float32 "
          "results on CUDA are less precise");
    }
  }
  return p;
}

std::unique_ptr<Decoder> LoadDecoder(const EngineOptions& options, const ModelConfig& config,
                                     const at::Device& device, const Precision& p) {
  c10::InferenceMode guard;
  const std::optional<quant::Format> quantize = ParseWeights(options.weights);
  // bfloat16 products: the matrices load as bfloat16, never whole in float32
  // (GritLM-7B would need 29 GB on the way). Likewise a bfloat16 checkpoint
  // computed in float32 where its matrices become bfloat16 panels or are
  // quantized. The decoder takes them a layer at a time (WeightSource).
  WeightSource weights(options.model_dir, config, p.dtype, device,
                       p.cpu_bf16_matmul ? at::kBFloat16 : at::ScalarType::Undefined,
                       /*keep_bfloat16_matrices=*/device.is_cpu() && p.dtype == at::kFloat &&
                           (Linear::Bfloat16PanelsAvailable() || quantize.has_value()));
  auto decoder = std::make_unique<Decoder>(config, weights,
                                           p.cpu_bf16_matmul ? at::kBFloat16 : p.dtype, quantize);
  spdlog::info("loaded and packed {}", weights.Summary());
  return decoder;
}

void LogCpuKernels(const Decoder& decoder, bool cpu_bf16_matmul, int threads) {
  spdlog::info("CPU matrix products: {}{}; {} threads; kernels for {}", Linear::CpuBackend(),
               cpu_bf16_matmul ? ", bfloat16 weights (float32 activations and KV cache)" : "",
               threads, kernels::Dispatch::Current().Describe());
  if (const int used = cpu_kernels::Threads(); used < at::get_num_threads()) {
    spdlog::warn("fused CPU kernels run on {} thread(s) of {}: built without OpenMP?", used,
                 at::get_num_threads());
  }
  if (const std::optional<quant::Format> q = decoder.weights_format()) {
    spdlog::info(
        "weights {}: linear layers and LM head quantized at load in blocks of {} ({:.1f} MB), "
        "{} kernels{}; embeddings and norms unquantized",
        quant::FormatName(*q), quant::kBlock, decoder.quantized_bytes() / 1e6,
        quant::Int8RowsName(quant::DispatchedIsa()),
        decoder.matmul_dtype() == at::kBFloat16
            ? ", products past 48 rows in native bfloat16 (--dtype float32 keeps float32)"
            : "");
  }
  if (decoder.lm_head_in_bfloat16()) {
    spdlog::info(
        "LM head held in bfloat16: its float32 values are all bfloat16 numbers "
        "(exact; half the bytes per generated token)");
  }
  if (decoder.embeddings_in_bfloat16() && !decoder.lm_head_in_bfloat16()) {
    spdlog::info(
        "embedding table held in bfloat16: its float32 values are all bfloat16 numbers (exact)");
  }
  if (const auto [held, all] = decoder.layer_matrices_in_bfloat16(); held > 0) {
    spdlog::info(
        "{} of {} layer weight matrices held as bfloat16 panels: their values are bfloat16 "
        "numbers, widened exactly for float32 products (half the weight memory and bytes "
        "streamed), {} kernel",
        held, all, kernels::IsaName(small_gemm::Bf16PanelIsa()));
  }
}

// What the front end holds besides the tokenizer and template, once the
// model is loaded: stop ids, names, and the document store.
void FinishShared(FrontEnd::Impl& f, const Decoder& decoder) {
  for (int64_t id : f.config.eos_token_ids) f.eos_ids.insert(static_cast<int32_t>(id));
  if (auto eos = f.tokenizer->eos_id()) f.eos_ids.insert(*eos);
  for (const std::string& s : f.prompt_template.stop) {
    if (auto id = f.tokenizer->TokenToId(s)) f.eos_ids.insert(*id);
  }
  f.sampleable_vocab = std::min<int64_t>(f.config.vocab_size, f.tokenizer->VocabSize());
  f.device_name = decoder.device().str();
  f.dtype_name = PrecisionName(decoder);

  DocKvStore::Options so;
  so.budget_bytes = f.options.cache_bytes;
  so.dir = f.options.cache_dir;
  so.disk_budget_bytes = f.options.cache_disk_bytes;
  so.storage_dtype = ParseDtype(f.options.cache_dtype == "auto" ? "float32" : f.options.cache_dtype,
                                at::Device(at::kCPU));
  // Entries computed at another precision are close but not equal: keep them apart.
  so.fingerprint = ModelFingerprint(f.options.model_dir) + "/" +
                   c10::DeviceTypeName(decoder.device().type(), /*lower_case=*/true) + "/" +
                   c10::toString(decoder.matmul_dtype());
  if (const std::optional<quant::Format> q = decoder.weights_format()) {
    so.fingerprint += std::string("/") + quant::FormatName(*q);
  }
  so.redis.url = f.options.cache_redis;
  so.redis.prefix = f.options.cache_redis_prefix;
  so.redis.timeout_ms = f.options.cache_redis_timeout_ms;
  try {
    f.store = std::make_unique<DocKvStore>(so);
  } catch (const std::invalid_argument& e) {  // a malformed --cache-redis
    throw LoadError(std::string("--cache-redis: ") + e.what());
  }
}

}  // namespace

std::unique_ptr<Engine> Engine::Load(const EngineOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // LibTorch starts with one intra-op thread here; use the cores we were given.
  at::set_num_threads(threads);

  const at::Device device = ParseDevice(options.device);
  auto shared = std::make_unique<FrontEnd::Impl>();
  shared->options = options;
  shared->config = ModelConfig::FromDirectory(options.model_dir);
  const Precision precision = ChoosePrecision(options, device, shared->config.NumParameters());
  shared->tokenizer = Tokenizer::FromDirectory(options.model_dir);
  shared->prompt_template = options.template_path.empty()
                                ? DefaultTemplateFor(*shared->tokenizer)
                                : PromptTemplate::FromJsonFile(options.template_path);
  std::unique_ptr<Decoder> decoder = LoadDecoder(options, shared->config, device, precision);
  if (device.is_cpu()) LogCpuKernels(*decoder, precision.cpu_bf16_matmul, threads);
  FinishShared(*shared, *decoder);

  const FrontEnd::Impl& state = *shared;
  auto front = std::make_unique<FrontEnd>(std::move(shared));
  auto runner = std::make_unique<Runner>(
      *front, std::unique_ptr<Runner::Impl>(new Runner::Impl{*front, state, std::move(decoder)}));

  const FrontEnd& f = *front;
  const ModelConfig& c = f.config();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info(
      "loaded {} ({} layers, hidden {}, {:.1f}M parameters) on {} as {}, tokenizer {} "
      "({} tokens), template '{}', {} threads, in {:.2f} s",
      c.architecture_name, c.num_hidden_layers, c.hidden_size, c.NumParameters() / 1e6,
      device.str(), f.dtype_name(), f.tokenizer().Kind(), f.tokenizer().VocabSize(),
      f.prompt_template().name, threads, secs);
  return std::unique_ptr<Engine>(new Engine(std::move(front), std::move(runner)));
}

Engine::Engine(std::unique_ptr<FrontEnd> front, std::unique_ptr<Runner> runner)
    : front_(std::move(front)), runner_(std::move(runner)) {}

Engine::~Engine() = default;

}  // namespace gritserve
