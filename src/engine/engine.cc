#include "gritserve/engine/engine.h"

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
#include "gritserve/model/cpu_kernels.h"
#include "gritserve/model/linear.h"
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

// "Float", "BFloat16", or "BFloat16 matmul, Float" when only the products are bfloat16.
std::string PrecisionName(const Decoder& d) {
  if (d.matmul_dtype() == d.dtype()) return c10::toString(d.dtype());
  return std::string(c10::toString(d.matmul_dtype())) + " matmul, " + c10::toString(d.dtype());
}

// Weights plus what serving needs beside them (activations, KV caches, the
// tokenizer, the document store's default budget).
int64_t ServingBytes(int64_t parameters, int64_t bytes_per_parameter) {
  return parameters * bytes_per_parameter * 11 / 10 + (int64_t{1} << 30);
}

std::string Gb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", static_cast<double>(bytes) / 1e9);
  return buf;
}

}  // namespace

std::string AutoCpuDtype(int64_t parameters, std::optional<int64_t> available_bytes,
                         bool bf16_products) {
  const bool fits = !available_bytes || ServingBytes(parameters, 4) <= *available_bytes;
  return fits || !bf16_products ? "float32" : "bfloat16";
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::Load(const EngineOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // LibTorch starts with one intra-op thread here; use the cores we were given.
  at::set_num_threads(threads);

  const at::Device device = ParseDevice(options.device);
  impl->config = ModelConfig::FromDirectory(options.model_dir);
  const int64_t params = impl->config.NumParameters();
  const std::optional<int64_t> available =
      device.is_cpu() ? AvailableMemoryBytes() : std::optional<int64_t>();
  std::string dtype_name = options.dtype;
  if (device.is_cpu() && dtype_name == "auto") {
    dtype_name = AutoCpuDtype(params, available, Linear::CpuBf16Available());
    if (dtype_name != "float32") {
      spdlog::info("float32 weights would need {} with {} available: {} matrix products",
                   Gb(ServingBytes(params, 4)), Gb(*available), dtype_name);
    }
  }
  const at::ScalarType requested = ParseDtype(dtype_name, device);
  // Say so with the numbers before the kernel's OOM killer does it silently.
  const int64_t weight_bytes = params * (requested == at::kFloat ? 4 : 2);
  if (available && weight_bytes > *available) {
    spdlog::warn("the model's {} parameters need {} as {} and {} is available{}", params,
                 Gb(weight_bytes), c10::toString(requested), Gb(*available),
                 requested == at::kFloat ? " (--dtype bfloat16 halves it)" : "");
  }
  // bfloat16 on a CPU with native bfloat16 kernels: the matrix products (nearly
  // all the arithmetic, and the weight bytes decode streams) run in bfloat16,
  // while norms, attention and the KV cache stay float32, where LibTorch's CPU
  // kernels are fast and the KV cache is exact.
  const bool cpu_bf16_matmul =
      device.is_cpu() && requested == at::kBFloat16 && Linear::CpuBf16Available();
  const at::ScalarType dtype = cpu_bf16_matmul ? at::kFloat : requested;
  if (device.is_cpu() && dtype != at::kFloat) {
    spdlog::warn("{} compute on CPU is far slower than float32 here", dtype_name);
  }
  if (device.is_cuda() && dtype == at::kFloat) {
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
  impl->tokenizer = Tokenizer::FromDirectory(options.model_dir);
  impl->prompt_template = options.template_path.empty()
                              ? DefaultTemplateFor(*impl->tokenizer)
                              : PromptTemplate::FromJsonFile(options.template_path);
  {
    c10::InferenceMode guard;
    impl->decoder = std::make_unique<Decoder>(
        impl->config,
        // bfloat16 products: the matrices load as bfloat16, never whole in float32
        // (GritLM-7B would need 29 GB on the way). Likewise a bfloat16
        // checkpoint computed in float32 where its matrices become bfloat16 panels.
        LoadWeights(options.model_dir, impl->config, dtype, device,
                    cpu_bf16_matmul ? at::kBFloat16 : at::ScalarType::Undefined,
                    /*keep_bfloat16_matrices=*/device.is_cpu() && dtype == at::kFloat &&
                        Linear::Bfloat16PanelsAvailable()),
        cpu_bf16_matmul ? at::kBFloat16 : dtype);
  }
  if (device.is_cpu()) {
    spdlog::info("CPU matrix products: {}{}; {} threads", Linear::CpuBackend(),
                 cpu_bf16_matmul ? ", bfloat16 weights (float32 activations and KV cache)" : "",
                 threads);
    if (const int used = cpu_kernels::Threads(); used < at::get_num_threads()) {
      spdlog::warn("fused CPU kernels run on {} thread(s) of {}: built without OpenMP?", used,
                   at::get_num_threads());
    }
    if (impl->decoder->lm_head_in_bfloat16()) {
      spdlog::info(
          "LM head held in bfloat16: its float32 values are all bfloat16 numbers "
          "(exact; half the bytes per generated token)");
    }
    if (const auto [held, all] = impl->decoder->layer_matrices_in_bfloat16(); held > 0) {
      spdlog::info(
          "{} of {} layer weight matrices held as bfloat16 panels: their values are bfloat16 "
          "numbers, widened exactly for float32 products (half the weight memory and bytes "
          "streamed)",
          held, all);
    }
  }

  for (int64_t id : impl->config.eos_token_ids) impl->eos_ids.insert(static_cast<int32_t>(id));
  if (auto eos = impl->tokenizer->eos_id()) impl->eos_ids.insert(*eos);
  for (const std::string& s : impl->prompt_template.stop) {
    if (auto id = impl->tokenizer->TokenToId(s)) impl->eos_ids.insert(*id);
  }
  impl->sampleable_vocab = std::min<int64_t>(impl->config.vocab_size, impl->tokenizer->VocabSize());

  DocKvStore::Options so;
  so.budget_bytes = options.cache_bytes;
  so.dir = options.cache_dir;
  so.storage_dtype = ParseDtype(options.cache_dtype == "auto" ? "float32" : options.cache_dtype,
                                at::Device(at::kCPU));
  // Entries computed at another precision are close but not equal: keep them apart.
  so.fingerprint = ModelFingerprint(options.model_dir) + "/" +
                   c10::DeviceTypeName(impl->decoder->device().type(), /*lower_case=*/true) + "/" +
                   c10::toString(impl->decoder->matmul_dtype());
  impl->store = std::make_unique<DocKvStore>(so);

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info(
      "loaded {} ({} layers, hidden {}, {:.1f}M parameters) on {} as {}, tokenizer {} "
      "({} tokens), template '{}', {} threads, in {:.2f} s",
      impl->config.architecture_name, impl->config.num_hidden_layers, impl->config.hidden_size,
      impl->config.NumParameters() / 1e6, device.str(), PrecisionName(*impl->decoder),
      impl->tokenizer->Kind(), impl->tokenizer->VocabSize(), impl->prompt_template.name, threads,
      secs);
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const ModelConfig& Engine::config() const { return impl_->config; }
const Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }
const PromptTemplate& Engine::prompt_template() const { return impl_->prompt_template; }
std::string Engine::device_name() const { return impl_->decoder->device().str(); }
std::string Engine::dtype_name() const { return PrecisionName(*impl_->decoder); }
int64_t Engine::max_context() const { return impl_->config.max_position_embeddings; }

EncodedPrompt Engine::EncodeEmbed(const std::string& text, const EmbedOptions& options) const {
  if (options.raw) return EncodeEmbedIds(impl_->tokenizer->Encode(text));
  return EncodeEmbedPrompt(*impl_->tokenizer, impl_->prompt_template, options.instruction, text);
}

EncodedPrompt Engine::EncodeEmbedIds(std::vector<int32_t> ids) const {
  EncodedPrompt p;
  p.ids = std::move(ids);
  p.text_begin = 0;
  p.text_end = p.ids.size();
  return p;
}

std::vector<int32_t> Engine::EncodeGenerate(const std::string& prompt, bool raw) const {
  if (raw) return impl_->tokenizer->Encode(prompt);
  return EncodeGeneratePrompt(*impl_->tokenizer, impl_->prompt_template, prompt);
}

std::vector<int32_t> Engine::EncodeChat(const std::vector<ChatMessage>& messages) const {
  return gritserve::EncodeChat(*impl_->tokenizer, impl_->prompt_template, messages);
}

std::vector<std::vector<float>> Engine::EmbedTexts(const std::vector<std::string>& texts,
                                                   const EmbedOptions& options) {
  std::vector<EncodedPrompt> prompts;
  prompts.reserve(texts.size());
  for (const auto& t : texts) prompts.push_back(EncodeEmbed(t, options));
  return Embed(prompts, options);
}

std::vector<std::vector<float>> Engine::Embed(const std::vector<EncodedPrompt>& prompts,
                                              const EmbedOptions& options, EmbedStore store,
                                              const std::vector<std::string>& store_ids) {
  c10::InferenceMode guard;
  const Decoder& decoder = *impl_->decoder;
  const int64_t hidden = impl_->config.hidden_size;
  if (options.dimensions < 0 || options.dimensions > hidden) {
    throw Unprocessable("dimensions must be between 1 and " + std::to_string(hidden));
  }
  if (options.layer == 0 || options.layer > impl_->config.num_hidden_layers) {
    throw Unprocessable("layer must be between 1 and " +
                        std::to_string(impl_->config.num_hidden_layers));
  }
  for (const auto& p : prompts) {
    if (p.text_end <= p.text_begin || p.text_end > p.ids.size()) {
      throw Unprocessable("an input has no tokens to embed");
    }
    if (static_cast<int64_t>(p.ids.size()) > max_context()) {
      throw Unprocessable("an input has " + std::to_string(p.ids.size()) +
                          " tokens; the model's context is " + std::to_string(max_context()));
    }
  }
  if (store != EmbedStore::kNone && options.layer > 0 &&
      options.layer != impl_->config.num_hidden_layers) {
    throw Unprocessable("'layer' cannot be combined with the document cache");
  }
  if (!store_ids.empty() && store_ids.size() != prompts.size()) {
    throw Unprocessable("'ids' must name every input");
  }
  auto finish = [&](at::Tensor pooled) {  // [H] float32 -> the response vector
    at::Tensor row = pooled.narrow(0, 0, options.dimensions > 0 ? options.dimensions : hidden);
    if (options.normalize) row = row / row.norm().clamp_min(1e-12);
    row = row.contiguous();
    return std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
  };
  std::vector<std::vector<float>> out(prompts.size());
  std::vector<DocKey> keys(prompts.size());
  std::vector<size_t> todo;  // prompts that need a forward pass
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (store == EmbedStore::kNone) {
      todo.push_back(i);
      continue;
    }
    keys[i] = impl_->store->MakeKey(impl_->prompt_template.name, KvSource::kEmbed, prompts[i].ids);
    auto entry = impl_->store->Get(keys[i]);
    const std::vector<float>* pooled =
        entry ? (options.pooling == Pooling::kMean ? &entry->mean : &entry->last) : nullptr;
    if (pooled != nullptr && static_cast<int64_t>(pooled->size()) == hidden &&
        entry->text_begin == prompts[i].text_begin && entry->text_end == prompts[i].text_end) {
      out[i] = finish(at::tensor(*pooled, at::kFloat));
    } else {
      todo.push_back(i);
    }
    if (i < store_ids.size() && !store_ids[i].empty()) {
      impl_->store->SetAlias(store_ids[i], {keys[i], KvSource::kEmbed, prompts[i].ids,
                                            prompts[i].text_begin, prompts[i].text_end});
    }
  }
  // Longest first, so each batch pads to its first member.
  std::vector<size_t> order = todo;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return prompts[a].ids.size() > prompts[b].ids.size();
  });

  const bool keep = store == EmbedStore::kKeep;
  size_t start = 0;
  while (start < order.size()) {
    const int64_t t = static_cast<int64_t>(prompts[order[start]].ids.size());
    size_t end = start + 1;
    while (end < order.size() &&
           static_cast<int64_t>(end - start + 1) * t <= impl_->options.max_batch_tokens) {
      ++end;
    }
    const int64_t b = static_cast<int64_t>(end - start);
    at::Tensor ids = at::zeros({b, t}, at::kLong);    // [B, T]
    at::Tensor valid = at::zeros({b, t}, at::kBool);  // [B, T]
    auto ids_a = ids.accessor<int64_t, 2>();
    auto valid_a = valid.accessor<bool, 2>();
    for (int64_t i = 0; i < b; ++i) {
      const auto& p = prompts[order[start + i]];
      for (size_t j = 0; j < p.ids.size(); ++j) {
        ids_a[i][j] = p.ids[j];
        valid_a[i][j] = true;
      }
    }
    ForwardInput in;
    in.ids = ids;
    in.positions = at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
    in.valid = valid;
    in.attention = AttentionSpec::Bidirectional();
    in.num_layers = keep ? -1 : options.layer;
    // With kKeep the same pass fills a KV cache whose rows become store entries.
    KvCache cache = keep ? decoder.NewCache(b) : KvCache();
    at::Tensor h =
        decoder.Forward(in, keep ? &cache : nullptr).to(at::kCPU).to(at::kFloat);  // [B, T, H]
    for (int64_t i = 0; i < b; ++i) {
      const size_t idx = order[start + i];
      const auto& p = prompts[idx];
      const int64_t tb = static_cast<int64_t>(p.text_begin);
      const int64_t te = static_cast<int64_t>(p.text_end);
      at::Tensor mean = h[i].narrow(0, tb, te - tb).mean(0);  // [H]
      at::Tensor last = h[i][te - 1];                         // [H]
      out[idx] = finish(options.pooling == Pooling::kMean ? mean : last);
      if (keep) {
        const int64_t n = static_cast<int64_t>(p.ids.size());
        DocKvEntry e;
        e.key = keys[idx];
        e.source = KvSource::kEmbed;
        e.ids = p.ids;
        e.text_begin = p.text_begin;
        e.text_end = p.text_end;
        for (int64_t l = 0; l < cache.num_layers(); ++l) {
          e.keys.push_back(cache.keys(l)[i].narrow(1, 0, n).clone());  // [Hkv, T, D]
          e.values.push_back(cache.values(l)[i].narrow(1, 0, n).clone());
        }
        mean = mean.contiguous();
        last = last.contiguous();
        e.mean.assign(mean.data_ptr<float>(), mean.data_ptr<float>() + hidden);
        e.last.assign(last.data_ptr<float>(), last.data_ptr<float>() + hidden);
        impl_->store->Put(std::move(e));
      }
    }
    start = end;
  }
  return out;
}

std::unique_ptr<Generation> Engine::StartGeneration(std::vector<int32_t> prompt_ids,
                                                    const SamplingParams& params,
                                                    TextCallback on_text,
                                                    std::vector<ResolvedDocument> documents,
                                                    DocPositions positions) {
  return MakeGeneration(*impl_, std::move(prompt_ids), params, std::move(on_text),
                        std::move(documents), positions);
}

std::vector<bool> Engine::StepAll(const std::vector<Generation*>& gens,
                                  std::vector<std::exception_ptr>* errors) {
  return StepGenerations(*impl_, gens, errors);
}

GenerateResult Engine::Generate(std::vector<int32_t> prompt_ids, const SamplingParams& params,
                                TextCallback on_text, std::vector<ResolvedDocument> documents,
                                DocPositions positions) {
  auto gen = StartGeneration(std::move(prompt_ids), params, std::move(on_text),
                             std::move(documents), positions);
  while (gen->Step()) {
  }
  return gen->result();
}

}  // namespace gritserve
