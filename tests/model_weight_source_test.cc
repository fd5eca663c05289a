// WeightSource: a checkpoint read tensor by tensor as the decoder builds, so
// that a quantized (or repacked) model never holds the whole checkpoint in its
// own precision on the way to its final size.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "gritserve/common/error.h"
#include "gritserve/model/checkpoint_writer.h"
#include "gritserve/model/decoder.h"
#include "gritserve/model/weights.h"
#include "test_util.h"

namespace gritserve {
namespace {

using testing::ProcStatusBytes;
using testing::ResetPeakResident;

// Wide enough that the matrices dwarf everything else: 24 layers of about
// 7.6 MB in bfloat16, about 183 MB of checkpoint.
ModelConfig WideConfig() {
  const nlohmann::json j = {{"architectures", {"Qwen2ForCausalLM"}},
                            {"hidden_size", 512},
                            {"intermediate_size", 2048},
                            {"num_hidden_layers", 24},
                            {"num_attention_heads", 8},
                            {"num_key_value_heads", 2},
                            {"vocab_size", 256},
                            {"tie_word_embeddings", true},
                            {"bos_token_id", 1},
                            {"eos_token_id", 2}};
  return ModelConfig::FromJsonText(j.dump());
}

class WeightSourceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("weight_source"));
    RandomWeightsOptions o;
    o.seed = 3;
    o.dtype = DType::kBF16;
    WriteRandomCheckpoint(*dir_, WideConfig(), o);
  }
  static void TearDownTestSuite() { delete dir_; }

  static WeightSource Open() {
    return WeightSource(*dir_, WideConfig(), at::kFloat, at::kCPU, at::ScalarType::Undefined,
                        /*keep_bfloat16_matrices=*/true);
  }
  static int64_t CheckpointMatrixBytes() {
    int64_t bytes = 0;
    for (const TensorSpec& s : ExpectedTensors(WideConfig())) {
      if (IsMatrixWeight(s.name)) bytes += 2 * s.shape[0] * s.shape[1];
    }
    return bytes;
  }

  static std::string* dir_;
};
std::string* WeightSourceTest::dir_ = nullptr;

TEST_F(WeightSourceTest, HandsEachTensorOutOnceAsLoadWeightsReadsIt) {
  const ModelConfig config = WideConfig();
  const WeightMap all =
      LoadWeights(*dir_, config, at::kFloat, at::kCPU, at::ScalarType::Undefined, true);
  WeightSource source = Open();
  const std::string name = "model.layers.3.mlp.down_proj.weight";
  const at::Tensor t = source.Take(name);
  EXPECT_EQ(t.scalar_type(), at::kBFloat16);  // kept: a BF16 matrix
  EXPECT_TRUE(at::equal(t, all.at(name)));
  EXPECT_EQ(source.Take("model.norm.weight").scalar_type(), at::kFloat);
  EXPECT_THROW(source.Take(name), Error);  // taken already
  EXPECT_THROW(source.Take("model.layers.99.mlp.down_proj.weight"), Error);
  EXPECT_NE(source.Summary().find("2 tensors"), std::string::npos) << source.Summary();
}

TEST_F(WeightSourceTest, CheckpointErrorsComeWhenItOpens) {
  // A config whose layers the checkpoint does not have: refused before any
  // tensor is read, naming what is missing.
  nlohmann::json j = nlohmann::json::parse(WideConfig().ToJsonText());
  j["num_hidden_layers"] = 25;
  try {
    WeightSource(*dir_, ModelConfig::FromJsonText(j.dump()), at::kFloat, at::kCPU);
    FAIL() << "a 25-layer config opened a 24-layer checkpoint";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLoad);
    EXPECT_NE(e.message().find("model.layers.24."), std::string::npos) << e.message();
  }
}

TEST_F(WeightSourceTest, DecoderBuiltFromTheSourceEqualsOneBuiltFromLoadedWeights) {
  const ModelConfig config = WideConfig();
  WeightSource source = Open();
  const Decoder streamed(config, source, at::kFloat, quant::Format::kQ8);
  const Decoder loaded(
      config, LoadWeights(*dir_, config, at::kFloat, at::kCPU, at::ScalarType::Undefined, true),
      at::kFloat, quant::Format::kQ8);
  ForwardInput in;
  in.ids = at::randint(0, 256, {1, 19}, at::kLong);  // [1, T]
  in.positions = at::arange(19, at::kLong).view({1, 19});
  const at::Tensor a = streamed.Logits(streamed.Forward(in, nullptr)[0]);  // [T, V]
  const at::Tensor b = loaded.Logits(loaded.Forward(in, nullptr)[0]);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_EQ(streamed.quantized_bytes(), loaded.quantized_bytes());
}

// The property the source exists for. Loading everything first holds the
// whole bfloat16 checkpoint before the first matrix is quantized; taking
// tensors as the layers are built peaks near the quantized model (about
// 0.53 of the bfloat16 bytes at q8) plus one layer in flight. Both are
// measured, the first as the control that shows the measurement can tell.
TEST_F(WeightSourceTest, QuantizedLoadPeaksNearTheQuantizedSizeNotTheCheckpoints) {
  const ModelConfig config = WideConfig();
  const double matrices = static_cast<double>(CheckpointMatrixBytes());
  ASSERT_GT(matrices, 100e6);
  ASSERT_TRUE(ResetPeakResident());
  int64_t before = ProcStatusBytes("VmHWM:");
  ASSERT_GT(before, 0);
  double streamed_peak = 0;
  {
    WeightSource source = Open();
    const Decoder d(config, source, at::kFloat, quant::Format::kQ8);
    streamed_peak = static_cast<double>(ProcStatusBytes("VmHWM:") - before);
  }
  ASSERT_TRUE(ResetPeakResident());
  before = ProcStatusBytes("VmHWM:");
  double loaded_peak = 0;
  {
    const Decoder d(
        config, LoadWeights(*dir_, config, at::kFloat, at::kCPU, at::ScalarType::Undefined, true),
        at::kFloat, quant::Format::kQ8);
    loaded_peak = static_cast<double>(ProcStatusBytes("VmHWM:") - before);
  }
  std::printf("bfloat16 matrices %.1f MB; load peak: streamed %.1f MB, all first %.1f MB\n",
              matrices / 1e6, streamed_peak / 1e6, loaded_peak / 1e6);
  EXPECT_GT(loaded_peak, 0.95 * matrices) << "control: loading everything first";
  EXPECT_LT(streamed_peak, 0.8 * matrices)
      << "streamed load peaked at " << streamed_peak / 1e6 << " MB for " << matrices / 1e6
      << " MB of bfloat16 matrices (loading all first: " << loaded_peak / 1e6 << " MB)";
}

// An untied embedding table of bfloat16 numbers (GritLM-7B's: 262 MB saved)
// is held in bfloat16 like a tied one, exactly: the same logits as the float32
// table that LibTorch's kernels keep.
TEST(WeightSourceUntied, Bfloat16ValuedEmbeddingTableIsHeldInBfloat16Exactly) {
  const nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                            {"hidden_size", 64},
                            {"intermediate_size", 96},
                            {"num_hidden_layers", 2},
                            {"num_attention_heads", 4},
                            {"num_key_value_heads", 2},
                            {"vocab_size", 300},
                            {"tie_word_embeddings", false},
                            {"bos_token_id", 1},
                            {"eos_token_id", 2}};
  const ModelConfig config = ModelConfig::FromJsonText(j.dump());
  const std::string dir = testing::MakeTempDir("weight_source_untied");
  RandomWeightsOptions o;
  o.seed = 5;
  o.dtype = DType::kBF16;
  WriteRandomCheckpoint(dir, config, o);
  auto load = [&] { return LoadWeights(dir, config, at::kFloat, at::kCPU); };
  const Decoder held(config, load());
  const Decoder quantized(config, load(), at::kFloat, quant::Format::kQ8);
  ASSERT_EQ(::setenv("GRITSERVE_CPU_KERNELS", "aten", 1), 0);
  const Decoder plain(config, load());
  ASSERT_EQ(::unsetenv("GRITSERVE_CPU_KERNELS"), 0);
  EXPECT_TRUE(held.embeddings_in_bfloat16());
  EXPECT_TRUE(quantized.embeddings_in_bfloat16());
  EXPECT_FALSE(plain.embeddings_in_bfloat16());
  ForwardInput in;
  in.ids = at::randint(0, 300, {1, 11}, at::kLong);  // [1, T]
  in.positions = at::arange(11, at::kLong).view({1, 11});
  const at::Tensor a = held.Logits(held.Forward(in, nullptr)[0]);  // [T, V]
  const at::Tensor b = plain.Logits(plain.Forward(in, nullptr)[0]);
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace gritserve
