// Config parsing, safetensors parsing and strict weight loading, on the qwen2-tiny
// fixture and on deliberately broken files.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gritserve/common/error.h"
#include "gritserve/model/checkpoint_writer.h"
#include "gritserve/model/config.h"
#include "gritserve/model/safetensors.h"
#include "gritserve/model/weights.h"
#include "test_util.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::FixturesDir;
using testing::MakeTempDir;
using testing::ReadFile;

// Runs fn, expecting a gritserve::Error of kind kLoad whose message contains every needle.
template <typename Fn>
void ExpectLoadError(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected an Error mentioning '" << needles.at(0) << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLoad) << e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message: " << e.what() << "\nexpected to contain: " << needle;
    }
  }
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string FixtureDir() { return FixturesDir() + "/qwen2-tiny"; }

// A minimal valid config for each architecture; tests edit the JSON.
json BaseConfig(const std::string& arch) {
  return {{"architectures", {arch}}, {"hidden_size", 32},        {"intermediate_size", 48},
          {"num_hidden_layers", 2},  {"num_attention_heads", 4}, {"vocab_size", 97}};
}

// ---------------------------------------------------------------------------------------
// Config

TEST(ModelConfig, FixtureFields) {
  const ModelConfig c = ModelConfig::FromDirectory(FixtureDir());
  EXPECT_EQ(c.arch, Architecture::kQwen2);
  EXPECT_EQ(c.architecture_name, "Qwen2ForCausalLM");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  // The fixture carries sliding_window but use_sliding_window is false.
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151643});
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, DefaultsApplied) {
  const ModelConfig c = ModelConfig::FromJsonText(BaseConfig("LlamaForCausalLM").dump());
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ModelConfig, NullOptionalKeysMeanDefault) {
  json j = BaseConfig("MistralForCausalLM");
  j["head_dim"] = nullptr;
  j["num_key_value_heads"] = nullptr;
  j["sliding_window"] = nullptr;
  j["rope_scaling"] = nullptr;
  const ModelConfig c = ModelConfig::FromJsonText(j.dump());
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_FALSE(c.rope_scaling.has_value());
}

TEST(ModelConfig, ExplicitHeadDimAndGqa) {
  json j = BaseConfig("LlamaForCausalLM");
  j["head_dim"] = 16;
  j["num_key_value_heads"] = 1;
  const ModelConfig c = ModelConfig::FromJsonText(j.dump());
  EXPECT_EQ(c.head_dim, 16);
  const std::vector<TensorSpec> specs = ExpectedTensors(c);
  auto shape_of = [&](const std::string& name) {
    for (const TensorSpec& s : specs) {
      if (s.name == name) return s.shape;
    }
    return std::vector<int64_t>{};
  };
  EXPECT_EQ(shape_of("model.layers.1.self_attn.q_proj.weight"), (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(shape_of("model.layers.1.self_attn.k_proj.weight"), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(shape_of("model.layers.1.self_attn.o_proj.weight"), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(shape_of("lm_head.weight"), (std::vector<int64_t>{97, 32}));
}

TEST(ModelConfig, MissingRequiredKeyIsNamed) {
  for (const char* key : {"architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size"}) {
    json j = BaseConfig("Qwen2ForCausalLM");
    j.erase(key);
    ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); },
                    {std::string("missing required key '") + key + "'"});
  }
}

TEST(ModelConfig, WronglyTypedKeyIsNamed) {
  json j = BaseConfig("Qwen2ForCausalLM");
  j["hidden_size"] = "64";
  ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); }, {"'hidden_size'", "integer"});
  j = BaseConfig("Qwen2ForCausalLM");
  j["tie_word_embeddings"] = 1;
  ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); }, {"'tie_word_embeddings'"});
  j = BaseConfig("Qwen2ForCausalLM");
  j["architectures"] = json::array();
  ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); }, {"'architectures'"});
  ExpectLoadError([] { ModelConfig::FromJsonText("{\"hidden_size\": "); }, {"not valid JSON"});
}

TEST(ModelConfig, UnsupportedArchitectureListsSupported) {
  ExpectLoadError([] { ModelConfig::FromJsonText(BaseConfig("GPT2LMHeadModel").dump()); },
                  {"unsupported architecture 'GPT2LMHeadModel'",
                   "supported: Qwen2ForCausalLM, LlamaForCausalLM, MistralForCausalLM"});
  EXPECT_EQ(
      SupportedArchitectures(),
      (std::vector<std::string>{"Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM"}));
}

TEST(ModelConfig, NonDivisibleHeadsRefused) {
  json j = BaseConfig("LlamaForCausalLM");
  j["num_key_value_heads"] = 3;
  ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); },
                  {"'num_attention_heads'", "'num_key_value_heads'"});
  j = BaseConfig("LlamaForCausalLM");
  j["hidden_size"] = 30;  // 30 / 4 heads, no head_dim given
  ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); },
                  {"'hidden_size'", "'num_attention_heads'"});
}

TEST(ModelConfig, NonPositiveSizesRefused) {
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
                          "num_attention_heads"}) {
    json j = BaseConfig("LlamaForCausalLM");
    j[key] = 0;
    ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); }, {std::string("'") + key + "'"});
  }
}

TEST(ModelConfig, BiasesFollowFieldsNotNames) {
  const ModelConfig qwen = ModelConfig::FromJsonText(BaseConfig("Qwen2ForCausalLM").dump());
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.o_bias);
  json j = BaseConfig("LlamaForCausalLM");
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  const ModelConfig llama = ModelConfig::FromJsonText(j.dump());
  EXPECT_TRUE(llama.qkv_bias);
  EXPECT_TRUE(llama.o_bias);
  EXPECT_TRUE(llama.mlp_bias);
  int biases = 0;
  for (const TensorSpec& s : ExpectedTensors(llama)) biases += s.name.find(".bias") != s.name.npos;
  EXPECT_EQ(biases, 2 * 7);  // q, k, v, o, gate, up, down per layer
  j = BaseConfig("MistralForCausalLM");
  j["attention_bias"] = true;  // not a Mistral field; ignored as transformers does
  const ModelConfig mistral = ModelConfig::FromJsonText(j.dump());
  EXPECT_FALSE(mistral.qkv_bias || mistral.o_bias || mistral.mlp_bias);
}

TEST(ModelConfig, SlidingWindow) {
  json j = BaseConfig("Qwen2ForCausalLM");
  j["sliding_window"] = 4096;
  EXPECT_FALSE(ModelConfig::FromJsonText(j.dump()).sliding_window.has_value());
  j["use_sliding_window"] = true;
  EXPECT_EQ(ModelConfig::FromJsonText(j.dump()).sliding_window, 4096);
  // max_window_layers as Hugging Face reads it: absent means 28; layers before it
  // attend fully. A written config reads back the same.
  EXPECT_EQ(ModelConfig::FromJsonText(j.dump()).window_from_layer, 28);
  j["max_window_layers"] = 1;
  const ModelConfig windowed = ModelConfig::FromJsonText(j.dump());
  EXPECT_EQ(windowed.window_from_layer, 1);
  EXPECT_EQ(ModelConfig::FromJsonText(windowed.ToJsonText()).window_from_layer, 1);
  j["max_window_layers"] = -1;
  EXPECT_THROW(ModelConfig::FromJsonText(j.dump()), Error);
  j.erase("max_window_layers");

  j = BaseConfig("MistralForCausalLM");
  j["sliding_window"] = 4096;
  EXPECT_EQ(ModelConfig::FromJsonText(j.dump()).sliding_window, 4096);
  j["sliding_window"] = nullptr;
  EXPECT_FALSE(ModelConfig::FromJsonText(j.dump()).sliding_window.has_value());

  j = BaseConfig("LlamaForCausalLM");
  j["sliding_window"] = 4096;
  EXPECT_FALSE(ModelConfig::FromJsonText(j.dump()).sliding_window.has_value());
}

TEST(ModelConfig, RopeScaling) {
  json j = BaseConfig("LlamaForCausalLM");
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  ModelConfig c = ModelConfig::FromJsonText(j.dump());
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 8.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);

  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};  // the older key
  c = ModelConfig::FromJsonText(j.dump());
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 2.0);

  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_FALSE(ModelConfig::FromJsonText(j.dump()).rope_scaling.has_value());

  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  ExpectLoadError([&] { ModelConfig::FromJsonText(j.dump()); }, {"'yarn'"});
}

TEST(ModelConfig, EosListMergedFromGenerationConfig) {
  const std::string dir = MakeTempDir("config-eos");
  json j = BaseConfig("Qwen2ForCausalLM");
  j["eos_token_id"] = 5;
  j["bos_token_id"] = 3;
  WriteFile(dir + "/config.json", j.dump());
  WriteFile(dir + "/generation_config.json", R"({"eos_token_id": [7, 5], "bos_token_id": 3})");
  const ModelConfig c = ModelConfig::FromDirectory(dir);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{5, 7}));
  EXPECT_EQ(c.bos_token_id, 3);
}

TEST(ModelConfig, MissingConfigFileNamesPath) {
  const std::string dir = MakeTempDir("config-missing");
  ExpectLoadError([&] { ModelConfig::FromDirectory(dir); }, {dir + "/config.json"});
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.architecture_name, b.architecture_name);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_DOUBLE_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_DOUBLE_EQ(a.rope_theta, b.rope_theta);
  ASSERT_EQ(a.rope_scaling.has_value(), b.rope_scaling.has_value());
  if (a.rope_scaling) {
    EXPECT_EQ(a.rope_scaling->type, b.rope_scaling->type);
    EXPECT_DOUBLE_EQ(a.rope_scaling->factor, b.rope_scaling->factor);
    EXPECT_DOUBLE_EQ(a.rope_scaling->low_freq_factor, b.rope_scaling->low_freq_factor);
    EXPECT_DOUBLE_EQ(a.rope_scaling->high_freq_factor, b.rope_scaling->high_freq_factor);
    EXPECT_EQ(a.rope_scaling->original_max_position_embeddings,
              b.rope_scaling->original_max_position_embeddings);
  }
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

TEST(ModelConfig, ToJsonTextRoundTrips) {
  std::vector<json> configs;
  configs.push_back(json::parse(ReadFile(FixtureDir() + "/config.json")));
  json llama = BaseConfig("LlamaForCausalLM");
  llama["attention_bias"] = true;
  llama["mlp_bias"] = true;
  llama["head_dim"] = 16;
  llama["num_key_value_heads"] = 2;
  llama["eos_token_id"] = {1, 2};
  llama["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", 8.0},
                           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 8192}};
  configs.push_back(llama);
  json mistral = BaseConfig("MistralForCausalLM");
  mistral["sliding_window"] = 64;
  mistral["rope_theta"] = 1e6;
  mistral["rms_norm_eps"] = 1e-5;
  configs.push_back(mistral);
  json qwen_window = BaseConfig("Qwen2ForCausalLM");
  qwen_window["use_sliding_window"] = true;
  qwen_window["sliding_window"] = 128;
  configs.push_back(qwen_window);

  for (const json& j : configs) {
    SCOPED_TRACE(j.dump());
    const ModelConfig a = ModelConfig::FromJsonText(j.dump());
    const std::string text = a.ToJsonText();
    const ModelConfig b = ModelConfig::FromJsonText(text);
    ExpectSameConfig(a, b);
    const json out = json::parse(text);
    EXPECT_EQ(out["model_type"], a.model_type);
    EXPECT_EQ(out["architectures"][0], a.architecture_name);
    EXPECT_TRUE(out["torch_dtype"].is_string());
  }
}

TEST(ModelConfig, NumParametersOfQwen25HalfB) {
  json j = {{"architectures", {"Qwen2ForCausalLM"}},
            {"hidden_size", 896},
            {"intermediate_size", 4864},
            {"num_hidden_layers", 24},
            {"num_attention_heads", 14},
            {"num_key_value_heads", 2},
            {"vocab_size", 151936},
            {"tie_word_embeddings", true}};
  // The parameter count Hugging Face reports for Qwen/Qwen2.5-0.5B.
  EXPECT_EQ(ModelConfig::FromJsonText(j.dump()).NumParameters(), 494032768);
}

// ---------------------------------------------------------------------------------------
// The fixture checkpoint

// A float32 model whose BF16 matrices become bfloat16 panels loads them as
// they are stored: the matrices (and only they) arrive in bfloat16, bit for
// bit, while norms and the embedding table still widen to float32.
TEST(LoadWeights, KeepsBfloat16MatricesOnlyWhenAsked) {
  const ModelConfig config = ModelConfig::FromDirectory(FixtureDir());
  const WeightMap wide = LoadWeights(FixtureDir(), config, at::kFloat, at::Device(at::kCPU));
  const WeightMap kept = LoadWeights(FixtureDir(), config, at::kFloat, at::Device(at::kCPU),
                                     at::ScalarType::Undefined, /*keep_bfloat16_matrices=*/true);
  ASSERT_EQ(kept.size(), wide.size());
  int64_t matrices = 0;
  for (const auto& [name, t] : kept) {
    SCOPED_TRACE(name);
    const at::Tensor& w = wide.at(name);
    EXPECT_EQ(w.scalar_type(), at::kFloat);
    if (IsMatrixWeight(name)) {
      ++matrices;
      ASSERT_EQ(t.scalar_type(), at::kBFloat16);
      EXPECT_TRUE(at::equal(t.to(at::kFloat), w));
    } else {
      ASSERT_EQ(t.scalar_type(), at::kFloat);
      EXPECT_TRUE(at::equal(t, w));
    }
  }
  EXPECT_EQ(matrices, 7 * config.num_hidden_layers);  // q k v o gate up down; tied head
}

TEST(LoadWeights, FixtureLoadsAsFloat32BitExactly) {
  const ModelConfig config = ModelConfig::FromDirectory(FixtureDir());
  const auto start = std::chrono::steady_clock::now();
  const WeightMap weights = LoadWeights(FixtureDir(), config, at::kFloat, at::Device(at::kCPU));
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("fixture load: %.1f ms\n", ms);

  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  EXPECT_EQ(specs.size(), 26u);
  ASSERT_EQ(weights.size(), specs.size());
  const auto file = SafeTensorsFile::Open(FixtureDir() + "/model.safetensors");
  for (const TensorSpec& spec : specs) {
    SCOPED_TRACE(spec.name);
    const at::Tensor& t = weights.at(spec.name);
    EXPECT_EQ(t.sizes().vec(), spec.shape);
    EXPECT_EQ(t.scalar_type(), at::kFloat);
    EXPECT_TRUE(t.is_contiguous());
    const TensorView& view = file->tensors().at(spec.name);
    ASSERT_EQ(view.dtype, DType::kBF16);
    ASSERT_EQ(view.numel(), t.numel());
    // bf16 is the top half of an f32: the converted value must be the raw bits shifted.
    const auto* raw = static_cast<const uint16_t*>(view.data);
    const auto* got = static_cast<const uint32_t*>(t.data_ptr());
    int64_t mismatches = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      mismatches += got[i] != (static_cast<uint32_t>(raw[i]) << 16);
    }
    EXPECT_EQ(mismatches, 0);
  }
  // The fixture's norm weights are not 1 and its biases not 0 (see its README).
  EXPECT_GT(weights.at("model.norm.weight").sub(1).abs().max().item<float>(), 0.01f);
  EXPECT_GT(weights.at("model.layers.0.self_attn.q_proj.bias").abs().max().item<float>(), 0.0f);
}

// bfloat16-matmul models take their linear layers' matrices in bfloat16 and
// everything else (embeddings, norms, biases) in float32.
TEST(LoadWeights, MatricesLoadInTheirOwnDtype) {
  const ModelConfig config = ModelConfig::FromDirectory(FixtureDir());
  const WeightMap f32 = LoadWeights(FixtureDir(), config, at::kFloat, at::Device(at::kCPU));
  const WeightMap mixed =
      LoadWeights(FixtureDir(), config, at::kFloat, at::Device(at::kCPU), at::kBFloat16);
  ASSERT_EQ(mixed.size(), f32.size());
  int matrices = 0;
  for (const auto& [name, t] : mixed) {
    const bool matrix = IsMatrixWeight(name);
    matrices += matrix;
    EXPECT_EQ(t.scalar_type(), matrix ? at::kBFloat16 : at::kFloat) << name;
    EXPECT_TRUE(at::equal(t.to(at::kFloat),
                          matrix ? f32.at(name).to(at::kBFloat16).to(at::kFloat) : f32.at(name)))
        << name;
  }
  EXPECT_EQ(matrices, 7 * config.num_hidden_layers);  // q, k, v, o, gate, up, down (head tied)
  EXPECT_TRUE(IsMatrixWeight("lm_head.weight"));
  EXPECT_FALSE(IsMatrixWeight("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(IsMatrixWeight("model.embed_tokens.weight"));
}

TEST(LoadWeights, FixtureLoadsAsBf16AndF16) {
  const ModelConfig config = ModelConfig::FromDirectory(FixtureDir());
  const WeightMap bf16 = LoadWeights(FixtureDir(), config, at::kBFloat16, at::Device(at::kCPU));
  const auto file = SafeTensorsFile::Open(FixtureDir() + "/model.safetensors");
  const TensorView& view = file->tensors().at("model.embed_tokens.weight");
  const at::Tensor& emb = bf16.at("model.embed_tokens.weight");
  EXPECT_EQ(emb.scalar_type(), at::kBFloat16);
  // Same dtype: an exact copy that owns its memory, not an alias of the mapping.
  EXPECT_EQ(std::memcmp(emb.data_ptr(), view.data, view.nbytes), 0);
  EXPECT_NE(emb.data_ptr(), view.data);

  const WeightMap f16 = LoadWeights(FixtureDir(), config, at::kHalf, at::Device(at::kCPU));
  EXPECT_EQ(f16.at("model.norm.weight").scalar_type(), at::kHalf);
}

TEST(SafeTensors, FixtureHeader) {
  const auto file = SafeTensorsFile::Open(FixtureDir() + "/model.safetensors");
  EXPECT_EQ(file->tensors().size(), 26u);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  const TensorView& v = file->tensors().at("model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(v.shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(v.nbytes, 64u * 128u * 2u);
  EXPECT_STREQ(DTypeName(v.dtype), "BF16");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
}

// ---------------------------------------------------------------------------------------
// Safetensors writer and malformed files

TEST(SafeTensors, WriterRoundTrip) {
  const std::string dir = MakeTempDir("st-roundtrip");
  const std::string path = dir + "/a.safetensors";
  std::string f32(3 * 4, '\0');
  const float vals[3] = {1.5f, -2.0f, 3.25f};
  std::memcpy(f32.data(), vals, sizeof(vals));
  WriteSafeTensors(path,
                   {{"b", DType::kF32, {3}, f32},
                    {"a", DType::kBF16, {1, 2}, std::string("\x80\x3f\x00\x40", 4)},
                    {"empty", DType::kF16, {0, 4}, ""}},
                   {{"format", "pt"}, {"note", "hi"}});
  const std::string bytes = ReadFile(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_len + 12 + 4);
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) entries += e.is_regular_file();
  EXPECT_EQ(entries, 1u) << "temporary file left behind";

  const auto file = SafeTensorsFile::Open(path);
  EXPECT_EQ(file->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}}));
  ASSERT_EQ(file->tensors().size(), 3u);
  const TensorView& b = file->tensors().at("b");
  EXPECT_EQ(b.dtype, DType::kF32);
  EXPECT_EQ(std::memcmp(b.data, vals, sizeof(vals)), 0);
  EXPECT_EQ(file->tensors().at("a").shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(file->tensors().at("empty").nbytes, 0u);
}

TEST(SafeTensors, WriterRefusesWrongByteCount) {
  const std::string dir = MakeTempDir("st-badwrite");
  ExpectLoadError(
      [&] {
        WriteSafeTensors(dir + "/x.safetensors", {{"x", DType::kF32, {2}, "abc"}});
      },
      {"'x'"});
  EXPECT_FALSE(fs::exists(dir + "/x.safetensors"));
}

// A file made of an explicit header length, header text and data.
std::string RawFile(uint64_t header_len, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &header_len, 8);
  return out + header + data;
}

std::string RawFile(const std::string& header, const std::string& data) {
  return RawFile(header.size(), header, data);
}

void ExpectOpenError(const std::string& bytes, const std::vector<std::string>& needles) {
  const std::string path = MakeTempDir("st-bad") + "/bad.safetensors";
  WriteFile(path, bytes);
  std::vector<std::string> with_path = needles;
  with_path.push_back(path);
  ExpectLoadError([&] { SafeTensorsFile::Open(path); }, with_path);
}

TEST(SafeTensors, TruncatedFile) { ExpectOpenError("\x10\0\0\0\0", {"truncated"}); }

TEST(SafeTensors, HeaderLengthPastEnd) {
  ExpectOpenError(RawFile(1000, "{}", ""), {"header length 1000", "past the end"});
  // An absurd length must be refused without trying to allocate it.
  ExpectOpenError(RawFile(uint64_t{1} << 62, "{}", ""), {"past the end"});
}

TEST(SafeTensors, MalformedHeader) {
  ExpectOpenError(RawFile("{\"x\": {\"dtype\": ", ""), {"not valid JSON"});
  ExpectOpenError(RawFile("[1, 2]", ""), {"not a JSON object"});
  ExpectOpenError(RawFile(R"({"x": {"shape": [1], "data_offsets": [0, 4]}})", "abcd"),
                  {"'x'", "dtype"});
  ExpectOpenError(RawFile(R"({"x": {"dtype": "F32", "data_offsets": [0, 4]}})", "abcd"),
                  {"'x'", "shape"});
  ExpectOpenError(RawFile(R"({"x": {"dtype": "F32", "shape": [1]}})", "abcd"),
                  {"'x'", "data_offsets"});
  ExpectOpenError(
      RawFile(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "abcd"),
      {"'x'", "shape"});
  ExpectOpenError(RawFile(R"({"x": 3})", ""), {"'x'"});
  ExpectOpenError(RawFile(R"({"__metadata__": {"a": 1}})", ""), {"__metadata__"});
}

TEST(SafeTensors, UnsupportedDtype) {
  for (const char* dtype : {"I64", "F64", "F8_E4M3", "U8"}) {
    ExpectOpenError(RawFile(std::string(R"({"x": {"dtype": ")") + dtype +
                                R"(", "shape": [1], "data_offsets": [0, 8]}})",
                            std::string(8, '\0')),
                    {std::string("unsupported dtype '") + dtype + "' for tensor 'x'"});
  }
}

TEST(SafeTensors, DataOffsetsChecked) {
  ExpectOpenError(RawFile(R"({"x": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}})",
                          std::string(16, '\0')),
                  {"'x'", "out of range"});
  ExpectOpenError(RawFile(R"({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})",
                          std::string(16, '\0')),
                  {"'x'", "begin > end"});
  ExpectOpenError(RawFile(R"({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}})",
                          std::string(16, '\0')),
                  {"'x'", "[2, 2]", "needs 16 bytes"});
  // A shape whose byte count overflows 64 bits.
  ExpectOpenError(
      RawFile(
          R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
          std::string(16, '\0')),
      {"'x'", "overflow"});
}

TEST(SafeTensors, MissingFile) {
  ExpectLoadError([] { SafeTensorsFile::Open("/nonexistent/model.safetensors"); },
                  {"/nonexistent/model.safetensors", "cannot open"});
}

// ---------------------------------------------------------------------------------------
// Strict loading: a small random checkpoint, edited.

ModelConfig SmallQwen() {
  json j = BaseConfig("Qwen2ForCausalLM");
  j["num_key_value_heads"] = 2;
  j["tie_word_embeddings"] = true;
  return ModelConfig::FromJsonText(j.dump());
}

// The tensors of a freshly written checkpoint, ready to edit and write back.
std::vector<TensorToWrite> CheckpointTensors(const std::string& dir) {
  const auto file = SafeTensorsFile::Open(dir + "/model.safetensors");
  std::vector<TensorToWrite> out;
  for (const auto& [name, v] : file->tensors()) {
    out.push_back(
        {name, v.dtype, v.shape, std::string(static_cast<const char*>(v.data), v.nbytes)});
  }
  return out;
}

// Writes a small valid checkpoint into a fresh dir, applies edit to its tensors, and
// returns the dir.
template <typename Edit>
std::string EditedCheckpoint(const ModelConfig& config, Edit edit) {
  const std::string dir = MakeTempDir("edited");
  WriteRandomCheckpoint(dir, config, {});
  std::vector<TensorToWrite> tensors = CheckpointTensors(dir);
  edit(tensors);
  WriteSafeTensors(dir + "/model.safetensors", tensors);
  return dir;
}

void Remove(std::vector<TensorToWrite>& tensors, const std::string& name) {
  const size_t before = tensors.size();
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [&](const TensorToWrite& t) { return t.name == name; }),
                tensors.end());
  ASSERT_EQ(tensors.size() + 1, before) << name;
}

WeightMap LoadF32(const std::string& dir, const ModelConfig& config) {
  return LoadWeights(dir, config, at::kFloat, at::Device(at::kCPU));
}

TEST(LoadWeights, MissingTensorNamed) {
  const ModelConfig config = SmallQwen();
  const std::string dir = EditedCheckpoint(config, [](std::vector<TensorToWrite>& t) {
    Remove(t, "model.layers.0.self_attn.q_proj.bias");
  });
  ExpectLoadError([&] { LoadF32(dir, config); },
                  {"missing tensor 'model.layers.0.self_attn.q_proj.bias'"});
}

TEST(LoadWeights, WrongShapeNamed) {
  const ModelConfig config = SmallQwen();
  const std::string dir = EditedCheckpoint(config, [](std::vector<TensorToWrite>& t) {
    Remove(t, "model.norm.weight");
    t.push_back({"model.norm.weight", DType::kF32, {31}, std::string(31 * 4, '\0')});
  });
  ExpectLoadError([&] { LoadF32(dir, config); },
                  {"tensor 'model.norm.weight' has shape [31], expected [32]"});
}

TEST(LoadWeights, UnexpectedTensorNamed) {
  const ModelConfig config = SmallQwen();
  const std::string dir = EditedCheckpoint(config, [](std::vector<TensorToWrite>& t) {
    t.push_back(
        {"model.layers.0.self_attn.o_proj.bias", DType::kF32, {32}, std::string(32 * 4, '\0')});
  });
  ExpectLoadError([&] { LoadF32(dir, config); },
                  {"unexpected tensor 'model.layers.0.self_attn.o_proj.bias'"});
}

TEST(LoadWeights, UnsupportedDtypeNamed) {
  const ModelConfig config = SmallQwen();
  const std::string dir = MakeTempDir("i64");
  WriteRandomCheckpoint(dir, config, {});
  // Rewrite one entry's dtype in place: F32 -> I32 keeps the header length and sizes.
  std::string bytes = ReadFile(dir + "/model.safetensors");
  const std::string needle = R"("model.norm.weight":{"data_offsets")";
  const size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  const size_t dtype_at = bytes.find("\"F32\"", at);
  bytes.replace(dtype_at, 5, "\"I32\"");
  WriteFile(dir + "/model.safetensors", bytes);
  ExpectLoadError([&] { LoadF32(dir, config); },
                  {"unsupported dtype 'I32' for tensor 'model.norm.weight'"});
}

TEST(LoadWeights, ToleratesInvFreqAndTiedHead) {
  const ModelConfig config = SmallQwen();
  const std::string dir = EditedCheckpoint(config, [](std::vector<TensorToWrite>& t) {
    t.push_back(
        {"model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32, {4}, std::string(16, '\0')});
    t.push_back({"lm_head.weight", DType::kF32, {97, 32}, std::string(97 * 32 * 4, '\0')});
  });
  const WeightMap weights = LoadF32(dir, config);
  EXPECT_EQ(weights.size(), ExpectedTensors(config).size());
  EXPECT_EQ(weights.count("lm_head.weight"), 0u);
}

TEST(LoadWeights, UntiedHeadIsRequired) {
  json j = BaseConfig("LlamaForCausalLM");
  const ModelConfig untied = ModelConfig::FromJsonText(j.dump());
  j["tie_word_embeddings"] = true;
  const ModelConfig tied = ModelConfig::FromJsonText(j.dump());
  const std::string dir = MakeTempDir("tied");
  WriteRandomCheckpoint(dir, tied, {});
  ExpectLoadError([&] { LoadF32(dir, untied); }, {"missing tensor 'lm_head.weight'"});
}

TEST(LoadWeights, MissingWeightsFile) {
  const std::string dir = MakeTempDir("noweights");
  ExpectLoadError([&] { LoadF32(dir, SmallQwen()); }, {"no .safetensors", dir});
  ExpectLoadError([&] { LoadF32(dir + "/nope", SmallQwen()); }, {dir + "/nope"});
}

TEST(LoadWeights, SingleOddlyNamedFileAccepted) {
  const ModelConfig config = SmallQwen();
  const std::string dir = MakeTempDir("oddname");
  WriteRandomCheckpoint(dir, config, {});
  fs::rename(dir + "/model.safetensors", dir + "/weights.safetensors");
  EXPECT_EQ(LoadF32(dir, config).size(), ExpectedTensors(config).size());
  fs::copy_file(dir + "/weights.safetensors", dir + "/other.safetensors");
  ExpectLoadError([&] { LoadF32(dir, config); }, {"several .safetensors"});
}

}  // namespace
}  // namespace gritserve
