// WriteRandomCheckpoint -> ModelConfig::FromDirectory + LoadWeights round trips, for each
// architecture, f32 and bf16, single file and sharded.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <tuple>

#include "gritserve/model/checkpoint_writer.h"
#include "gritserve/model/config.h"
#include "gritserve/model/safetensors.h"
#include "gritserve/model/weights.h"
#include "test_util.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::MakeTempDir;
using testing::ReadFile;

ModelConfig SmallConfig(Architecture arch) {
  json j = {{"hidden_size", 32},        {"intermediate_size", 48},  {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 97},
            {"bos_token_id", 1},        {"eos_token_id", 2}};
  switch (arch) {
    case Architecture::kQwen2:
      j["architectures"] = {"Qwen2ForCausalLM"};
      j["tie_word_embeddings"] = true;
      j["rope_theta"] = 1e6;
      break;
    case Architecture::kLlama:
      j["architectures"] = {"LlamaForCausalLM"};
      j["head_dim"] = 16;  // q_proj wider than hidden: o_proj is [32, 64]
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", 8.0},
                           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 64}};
      j["eos_token_id"] = {2, 3};
      break;
    case Architecture::kMistral:
      j["architectures"] = {"MistralForCausalLM"};
      j["sliding_window"] = 16;
      j["num_key_value_heads"] = 1;
      break;
  }
  return ModelConfig::FromJsonText(j.dump());
}

WeightMap LoadF32(const std::string& dir, const ModelConfig& config) {
  return LoadWeights(dir, config, at::kFloat, at::Device(at::kCPU));
}

using Param = std::tuple<Architecture, DType, bool /*shard*/>;

class RoundTrip : public ::testing::TestWithParam<Param> {
 protected:
  Architecture arch() const { return std::get<0>(GetParam()); }
  DType dtype() const { return std::get<1>(GetParam()); }
  bool shard() const { return std::get<2>(GetParam()); }

  // Writes the parameter's checkpoint for `seed` and returns its dir.
  std::string Write(uint64_t seed, bool shard) const {
    const std::string dir = MakeTempDir("roundtrip");
    RandomWeightsOptions options;
    options.seed = seed;
    options.dtype = dtype();
    options.shard = shard;
    WriteRandomCheckpoint(dir, SmallConfig(arch()), options);
    return dir;
  }
};

TEST_P(RoundTrip, LoadsWhatWasWritten) {
  const ModelConfig config = SmallConfig(arch());
  const std::string dir = Write(7, shard());

  const ModelConfig reread = ModelConfig::FromDirectory(dir);
  EXPECT_EQ(reread.arch, config.arch);
  EXPECT_EQ(reread.head_dim, config.head_dim);
  EXPECT_EQ(reread.num_key_value_heads, config.num_key_value_heads);
  EXPECT_EQ(reread.qkv_bias, config.qkv_bias);
  EXPECT_EQ(reread.tie_word_embeddings, config.tie_word_embeddings);
  EXPECT_EQ(reread.sliding_window, config.sliding_window);
  EXPECT_EQ(reread.rope_scaling.has_value(), config.rope_scaling.has_value());
  EXPECT_EQ(reread.eos_token_ids, config.eos_token_ids);
  EXPECT_EQ(reread.torch_dtype, dtype() == DType::kF32 ? "float32" : "bfloat16");

  const WeightMap weights = LoadF32(dir, reread);
  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  ASSERT_EQ(weights.size(), specs.size());

  // The loaded values are exactly the stored ones, converted.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  }
  EXPECT_EQ(files.size() > 1, shard());
  EXPECT_EQ(fs::exists(dir + "/model.safetensors.index.json"), shard());
  size_t seen = 0;
  for (const std::string& path : files) {
    const auto file = SafeTensorsFile::Open(path);
    EXPECT_EQ(file->metadata().at("format"), "pt");
    for (const auto& [name, view] : file->tensors()) {
      SCOPED_TRACE(name);
      ++seen;
      EXPECT_EQ(view.dtype, dtype());
      const at::Tensor& t = weights.at(name);
      EXPECT_EQ(t.sizes().vec(), view.shape);
      const at::Tensor stored = at::from_blob(const_cast<void*>(view.data), view.shape,
                                              dtype() == DType::kF32 ? at::kFloat : at::kBFloat16)
                                    .to(at::kFloat);
      EXPECT_TRUE(at::equal(t, stored));
    }
  }
  EXPECT_EQ(seen, specs.size());

  // The distributions the writer promises: norms near but not at 1, biases small, non-zero.
  const at::Tensor norm = weights.at("model.layers.1.input_layernorm.weight");
  EXPECT_NEAR(norm.mean().item<float>(), 1.0f, 0.1f);
  EXPECT_GT(norm.std().item<float>(), 0.03f);
  const at::Tensor emb = weights.at("model.embed_tokens.weight");
  EXPECT_NEAR(emb.std().item<float>(), 0.02f, 0.004f);
  if (config.qkv_bias) {
    const at::Tensor bias = weights.at("model.layers.0.self_attn.k_proj.bias");
    EXPECT_GT(bias.abs().max().item<float>(), 0.0f);
    EXPECT_LT(bias.abs().max().item<float>(), 0.2f);
  }
}

TEST_P(RoundTrip, DeterministicPerSeed) {
  const std::string a = Write(11, shard());
  const std::string b = Write(11, shard());
  const std::string c = Write(12, shard());
  for (const auto& e : fs::directory_iterator(a)) {
    const std::string name = e.path().filename().string();
    SCOPED_TRACE(name);
    EXPECT_EQ(ReadFile(e.path().string()), ReadFile(b + "/" + name));
  }
  const ModelConfig config = SmallConfig(arch());
  const WeightMap wa = LoadF32(a, config);
  const WeightMap wc = LoadF32(c, config);
  for (const auto& [name, t] : wa) {
    EXPECT_FALSE(at::equal(t, wc.at(name))) << name;
  }
}

TEST_P(RoundTrip, SameWeightsAcrossLayoutsAndDtypes) {
  const ModelConfig config = SmallConfig(arch());
  const WeightMap mine = LoadF32(Write(5, shard()), config);
  const WeightMap other_layout = LoadF32(Write(5, !shard()), config);
  // The f32 checkpoint of the same seed, rounded to bf16, gives the bf16 checkpoint.
  const std::string f32_dir = MakeTempDir("roundtrip-f32");
  RandomWeightsOptions options;
  options.seed = 5;
  WriteRandomCheckpoint(f32_dir, config, options);
  const WeightMap f32 = LoadF32(f32_dir, config);
  for (const auto& [name, t] : mine) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(at::equal(t, other_layout.at(name)));
    const at::Tensor expected =
        dtype() == DType::kF32 ? f32.at(name) : f32.at(name).to(at::kBFloat16).to(at::kFloat);
    EXPECT_TRUE(at::equal(t, expected));
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  static const char* const kArch[] = {"Qwen2", "Llama", "Mistral"};
  return std::string(kArch[static_cast<int>(std::get<0>(info.param))]) + "_" +
         DTypeName(std::get<1>(info.param)) + (std::get<2>(info.param) ? "_Sharded" : "");
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, RoundTrip,
                         ::testing::Combine(::testing::Values(Architecture::kQwen2,
                                                              Architecture::kLlama,
                                                              Architecture::kMistral),
                                            ::testing::Values(DType::kF32, DType::kBF16),
                                            ::testing::Bool()),
                         ParamName);

TEST(WriteRandomCheckpoint, ShardIndexMatchesFiles) {
  const ModelConfig config = SmallConfig(Architecture::kLlama);
  const std::string dir = MakeTempDir("shards");
  RandomWeightsOptions options;
  options.shard = true;
  options.shard_max_bytes = 20000;  // several shards; the 97x32 f32 embedding fits one
  WriteRandomCheckpoint(dir, config, options);

  const json index = json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  std::map<std::string, std::vector<std::string>> by_file;
  for (const auto& [name, file] : index["weight_map"].items()) {
    by_file[file.get<std::string>()].push_back(name);
  }
  EXPECT_GT(by_file.size(), 3u);
  const std::string count = std::to_string(by_file.size());
  uint64_t total = 0;
  for (const auto& [file, names] : by_file) {
    SCOPED_TRACE(file);
    EXPECT_EQ(file.size(), std::string("model-00001-of-00005.safetensors").size());
    EXPECT_NE(file.find("-of-0000" + count), std::string::npos);
    const auto st = SafeTensorsFile::Open(dir + "/" + file);
    EXPECT_EQ(st->tensors().size(), names.size());
    uint64_t file_bytes = 0;
    for (const std::string& name : names) {
      ASSERT_EQ(st->tensors().count(name), 1u) << name;
      file_bytes += st->tensors().at(name).nbytes;
    }
    // Packing never exceeds the limit except for a tensor alone in its shard.
    if (names.size() > 1) {
      EXPECT_LE(file_bytes, static_cast<uint64_t>(options.shard_max_bytes));
    }
    total += file_bytes;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(total, static_cast<uint64_t>(config.NumParameters()) * 4);
  EXPECT_EQ(LoadF32(dir, config).size(), ExpectedTensors(config).size());
}

TEST(WriteRandomCheckpoint, GenerationConfigCarriesTokenIds) {
  const ModelConfig config = SmallConfig(Architecture::kLlama);
  const std::string dir = MakeTempDir("genconfig");
  WriteRandomCheckpoint(dir, config, {});
  const json g = json::parse(ReadFile(dir + "/generation_config.json"));
  EXPECT_EQ(g["bos_token_id"], 1);
  EXPECT_EQ(g["eos_token_id"], json({2, 3}));
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.json"));
}

TEST(WriteRandomCheckpoint, InitStdIsHonoured) {
  const ModelConfig config = SmallConfig(Architecture::kMistral);
  const std::string dir = MakeTempDir("initstd");
  RandomWeightsOptions options;
  options.init_std = 0.5f;
  WriteRandomCheckpoint(dir, config, options);
  const WeightMap w = LoadF32(dir, config);
  EXPECT_NEAR(w.at("model.embed_tokens.weight").std().item<float>(), 0.5f, 0.05f);
  EXPECT_NEAR(w.at("lm_head.weight").std().item<float>(), 0.5f, 0.05f);
  EXPECT_NEAR(w.at("model.norm.weight").mean().item<float>(), 1.0f, 0.1f);
}

}  // namespace
}  // namespace gritserve
