// --weights through the engine: q8 and q4 load, generate and embed; what they
// cannot run is refused at load with a message naming the flag.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "gritserve/common/error.h"
#include "gritserve/engine/engine.h"
#include "gritserve/kernels/linear.h"
#include "test_util.h"

namespace gritserve {
namespace {

EngineOptions Options(const std::string& weights) {
  EngineOptions o;
  o.model_dir = testing::FixturesDir() + "/qwen2-tiny";
  o.threads = 2;
  o.weights = weights;
  return o;
}

double Cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) ab += a[i] * b[i], aa += a[i] * a[i], bb += b[i] * b[i];
  return ab / std::sqrt(aa * bb);
}

TEST(EngineWeights, QuantizedModelsGenerateAndEmbedCloseToTheOriginal) {
  const auto ref = Engine::Load(Options("bf16"));
  const std::vector<std::string> texts = {"a short text", "another, somewhat longer text to embed"};
  const auto ref_vectors = ref->runner().EmbedTexts(texts, EmbedOptions{});
  for (const char* w : {"q8", "q4"}) {
    const auto e = Engine::Load(Options(w));
    // auto: bfloat16 products for prompt-sized products where the CPU has them.
    EXPECT_EQ(e->front().dtype_name(),
              Linear::CpuBf16Available() ? "BFloat16 matmul, Float" : "Float")
        << w;
    SamplingParams p;
    p.max_tokens = 6;
    p.temperature = 0;
    p.ignore_eos = true;
    const GenerateResult r = e->runner().Generate(e->front().EncodeGenerate("Hello", false), p);
    EXPECT_EQ(r.completion_tokens, 6) << w;
    const auto vectors = e->runner().EmbedTexts(texts, EmbedOptions{});
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_GT(Cosine(vectors[i], ref_vectors[i]), std::string(w) == "q8" ? 0.999 : 0.95) << w;
    }
  }
}

// Engine::Load's error for `o`, or "" if it loads.
std::string LoadMessage(const EngineOptions& o) {
  try {
    Engine::Load(o);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLoad);
    return e.message();
  }
  return "";
}

TEST(EngineWeights, RefusesWhatQuantizedWeightsCannotRun) {
  EngineOptions half = Options("q8");
  half.dtype = "float16";
  EXPECT_NE(LoadMessage(half).find("--weights q8"), std::string::npos);
  // bfloat16 products only where the CPU multiplies bfloat16 natively;
  // float32 everywhere.
  EngineOptions bf16 = Options("q8");
  bf16.dtype = "bfloat16";
  EXPECT_EQ(LoadMessage(bf16).find("--weights q8") == std::string::npos,
            Linear::CpuBf16Available());
  EngineOptions f32 = Options("q8");
  f32.dtype = "float32";
  EXPECT_EQ(LoadMessage(f32), "");
  EXPECT_EQ(Engine::Load(f32)->front().dtype_name(), "Float");
  EXPECT_NE(LoadMessage(Options("q3")).find("unknown --weights 'q3'"), std::string::npos);
}

}  // namespace
}  // namespace gritserve
