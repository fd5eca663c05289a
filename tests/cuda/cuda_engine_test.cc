// The engine on a CUDA device, on the shared tiny Qwen2 checkpoint: float32
// reproduces the independent reference (hidden states, mean embedding, greedy
// tokens), bfloat16 and float16 stay close to float32, document K/V reuse
// equals the uncached layout, and the server binary serves with --device cuda.
// Built only against a CUDA build of LibTorch (see tests/CMakeLists.txt).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "gritserve/engine/engine.h"
#include "gritserve/model/decoder.h"
#include "server_harness.h"
#include "test_util.h"

namespace gritserve {
namespace {

using nlohmann::json;

std::string TinyDir() { return testing::FixturesDir() + "/qwen2-tiny"; }

std::unique_ptr<Engine> LoadOnCuda(const std::string& dtype) {
  EngineOptions o;
  o.model_dir = TinyDir();
  o.device = "cuda";
  o.dtype = dtype;
  o.threads = 2;
  return Engine::Load(o);
}

at::Tensor FromJson(const json& j) {  // [T, H] or [H], float32 on the CPU
  if (j[0].is_array()) {
    std::vector<at::Tensor> rows;
    for (const auto& r : j) rows.push_back(FromJson(r));
    return at::stack(rows);
  }
  return at::tensor(j.get<std::vector<float>>(), at::kFloat);
}
at::Tensor Vec(const std::vector<float>& v) { return at::tensor(v, at::kFloat); }
double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}
double Cosine(const std::vector<float>& a, const std::vector<float>& b) {
  return at::cosine_similarity(Vec(a), Vec(b), 0).item<double>();
}

SamplingParams Greedy(int64_t steps, bool capture_logits = false) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = steps;
  p.ignore_eos = true;
  p.capture_logits = capture_logits;
  return p;
}

double MaxLogitDiff(const GenerateResult& a, const GenerateResult& b) {
  double worst = 0;
  EXPECT_EQ(a.step_logits.size(), b.step_logits.size());
  for (size_t s = 0; s < std::min(a.step_logits.size(), b.step_logits.size()); ++s) {
    worst = std::max(worst, MaxDiff(Vec(a.step_logits[s]), Vec(b.step_logits[s])));
  }
  return worst;
}

const std::vector<std::string> kTexts = {
    "Paris is the capital of France.", "hi",
    "def add(a, b):\n    return a + b  # a longer input, so a batch pads the others",
    "한국어 문장도 포함합니다."};

class CudaEngineTest : public ::testing::Test {
 protected:
  // Engine::Load is the first CUDA query (it makes sure libtorch_cuda is
  // loaded first), so nothing here asks at::hasCUDA() before it.
  static void SetUpTestSuite() {
    try {
      f32_ = LoadOnCuda("float32").release();
      ModelConfig c = ModelConfig::FromDirectory(TinyDir());
      decoder_ = new Decoder(c, LoadWeights(TinyDir(), c, at::kFloat, at::Device("cuda")));
      reference_ = new json(json::parse(testing::ReadFile(TinyDir() + "/reference.json")));
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  }
  static void TearDownTestSuite() {
    delete f32_;
    delete decoder_;
    delete reference_;
  }
  void SetUp() override { ASSERT_TRUE(error_.empty()) << error_; }

  // Hidden states of one sequence through the separate decoder: [T, H] on the CPU.
  static at::Tensor Hidden(const std::vector<int64_t>& ids, AttentionSpec spec) {
    c10::InferenceMode guard;
    const int64_t n = static_cast<int64_t>(ids.size());
    ForwardInput in;
    in.ids = at::tensor(ids, at::kLong).view({1, n});
    in.positions = at::arange(n, at::kLong).view({1, n});
    in.attention = spec;
    at::Tensor h = decoder_->Forward(in, nullptr)[0];
    EXPECT_TRUE(h.is_cuda());
    return h.to(at::kCPU);
  }

  // The uncached layout that generating over cached documents stands for: one
  // forward pass per step over documents + prompt + generated tokens.
  static GenerateResult Uncached(const std::vector<ResolvedDocument>& docs,
                                 const std::vector<int32_t>& prompt, int steps) {
    c10::InferenceMode guard;
    std::vector<int64_t> ids;
    std::vector<AttentionBlock> blocks;
    for (const auto& d : docs) {
      ids.insert(ids.end(), d.ids.begin(), d.ids.end());
      blocks.push_back({static_cast<int64_t>(d.ids.size()), d.source == KvSource::kEmbed, false});
    }
    ids.insert(ids.end(), prompt.begin(), prompt.end());
    blocks.push_back({static_cast<int64_t>(prompt.size()), false, /*sees_previous=*/true});
    GenerateResult r;
    const int64_t limit = f32_->tokenizer().VocabSize();
    for (int step = 0; step < steps; ++step) {
      const int64_t t = static_cast<int64_t>(ids.size());
      ForwardInput in;
      in.ids = at::tensor(ids, at::kLong).view({1, t});
      in.positions = at::arange(t, at::kLong).view({1, t});
      in.attention = AttentionSpec::Blocks(blocks);
      at::Tensor h = decoder_->Forward(in, nullptr)[0];
      at::Tensor logits = decoder_->Logits(h.narrow(0, t - 1, 1))[0].to(at::kCPU).contiguous();
      r.step_logits.emplace_back(logits.data_ptr<float>(),
                                 logits.data_ptr<float>() + logits.numel());
      ids.push_back(logits.narrow(0, 0, limit).argmax().item<int64_t>());
      r.tokens.push_back(static_cast<int32_t>(ids.back()));
      blocks.back().length += 1;
    }
    return r;
  }

  static inline Engine* f32_ = nullptr;
  static inline Decoder* decoder_ = nullptr;
  static inline json* reference_ = nullptr;
  static inline std::string error_;
};

TEST_F(CudaEngineTest, Float32MatchesTheReference) {
  EXPECT_EQ(f32_->device_name().rfind("cuda", 0), 0u) << f32_->device_name();
  EXPECT_EQ(f32_->dtype_name(), "Float");
  EXPECT_FALSE(at::globalContext().allowTF32CuBLAS()) << "float32 on CUDA must not use TF32";
  ASSERT_GE((*reference_)["cases"].size(), 1u);
  for (const auto& c : (*reference_)["cases"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    // The fixture's float32 tolerances (fixtures/README.md).
    EXPECT_LE(MaxDiff(Hidden(ids, AttentionSpec::Causal()), FromJson(c["causal_hidden"])), 2e-4)
        << c["text"];
    EXPECT_LE(
        MaxDiff(Hidden(ids, AttentionSpec::Bidirectional()), FromJson(c["bidirectional_hidden"])),
        2e-4)
        << c["text"];
    // Through the engine: raw mean pooling over every token, and greedy decoding.
    EmbedOptions o;
    o.normalize = false;
    const std::vector<int32_t> ids32(ids.begin(), ids.end());
    const std::vector<float> mean = f32_->Embed({f32_->EncodeEmbedIds(ids32)}, o)[0];
    const at::Tensor expected_mean = FromJson(c["bidirectional_mean"]);
    EXPECT_GE(at::cosine_similarity(Vec(mean), expected_mean, 0).item<double>(), 0.99999)
        << c["text"];
    EXPECT_LE(MaxDiff(Vec(mean), expected_mean), 2e-4) << c["text"];
    const auto greedy = c["greedy_tokens"].get<std::vector<int32_t>>();
    GenerateResult r = f32_->Generate(ids32, Greedy(static_cast<int64_t>(greedy.size())));
    EXPECT_EQ(r.tokens, greedy) << c["text"];
  }
}

TEST_F(CudaEngineTest, HalfPrecisionStaysCloseToFloat32) {
  const auto f32 = f32_->EmbedTexts(kTexts, EmbedOptions{});
  for (const std::string dtype : {"bfloat16", "float16"}) {
    auto e = LoadOnCuda(dtype);
    EXPECT_EQ(e->dtype_name(), dtype == "bfloat16" ? "BFloat16" : "Half");
    // One batch of different lengths: padded rows must not disturb the others.
    const auto got = e->EmbedTexts(kTexts, EmbedOptions{});
    ASSERT_EQ(got.size(), kTexts.size());
    for (size_t i = 0; i < kTexts.size(); ++i) {
      for (float x : got[i]) ASSERT_TRUE(std::isfinite(x)) << dtype << " " << kTexts[i];
      EXPECT_GE(Cosine(got[i], f32[i]), 0.99) << dtype << " " << kTexts[i];
    }
    GenerateResult r = e->Generate(e->EncodeGenerate("Once upon a time", false), Greedy(8));
    EXPECT_EQ(r.completion_tokens, 8) << dtype;
    EXPECT_EQ(r.finish_reason, "length") << dtype;
  }
}

TEST_F(CudaEngineTest, DocumentKvReuseMatchesTheUncachedLayout) {
  constexpr int kSteps = 12;
  const std::vector<int32_t> prompt = f32_->EncodeGenerate("Summarise the documents.", false);
  std::vector<DocumentRef> refs;
  for (size_t i = 0; i < 3; ++i) refs.push_back({"", kTexts[i], {}});
  for (KvSource source : {KvSource::kCausal, KvSource::kEmbed}) {
    const auto docs = f32_->ResolveDocuments(refs, source);
    int64_t doc_tokens = 0;
    for (const auto& d : docs) doc_tokens += static_cast<int64_t>(d.ids.size());
    const GenerateResult ref = Uncached(docs, prompt, kSteps);
    // The first round computes and stores the entries (on the CPU), the second
    // brings them back to the device.
    for (int round = 0; round < 2; ++round) {
      GenerateResult cached = f32_->Generate(prompt, Greedy(kSteps, true), nullptr, docs);
      const std::string what =
          std::string(KvSourceName(source)) + " round " + std::to_string(round);
      EXPECT_EQ(cached.cached_tokens, doc_tokens) << what;
      EXPECT_EQ(cached.tokens, ref.tokens) << what;
      EXPECT_LT(MaxLogitDiff(cached, ref), 1e-4) << what;
    }
  }
  // Entries kept by /embed's own pass are reused by id without recomputing.
  f32_->Embed({f32_->EncodeEmbed(kTexts[3], {})}, {}, EmbedStore::kKeep, {"doc-ko"});
  const auto by_id = f32_->ResolveDocuments({{"doc-ko", "", {}}}, KvSource::kEmbed);
  const int64_t computed = f32_->document_stats().computed;
  GenerateResult cached = f32_->Generate(prompt, Greedy(kSteps, true), nullptr, by_id);
  EXPECT_EQ(f32_->document_stats().computed, computed);
  const GenerateResult ref = Uncached(by_id, prompt, kSteps);
  EXPECT_EQ(cached.tokens, ref.tokens);
  EXPECT_LT(MaxLogitDiff(cached, ref), 1e-4);
}

TEST_F(CudaEngineTest, ServerAnswersWithDeviceCuda) {
  testing::ServerProcess server(TinyDir(), {"--device", "cuda"});
  auto client = server.Client();
  auto info = client->Get("/info");
  ASSERT_TRUE(info && info->status == 200) << server.Log();
  const json i = json::parse(info->body);
  EXPECT_EQ(i["device"].get<std::string>().rfind("cuda", 0), 0u) << info->body;
  EXPECT_EQ(i["dtype"], "BFloat16") << "auto is bfloat16 on CUDA";

  const std::vector<std::string> texts = {kTexts[0], kTexts[2]};
  auto res = client->Post("/embed", json{{"inputs", texts}}.dump(), "application/json");
  ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "no response") << server.Log();
  const auto served = json::parse(res->body).get<std::vector<std::vector<float>>>();
  const auto f32 = f32_->EmbedTexts(texts, EmbedOptions{});
  ASSERT_EQ(served.size(), texts.size());
  for (size_t k = 0; k < texts.size(); ++k) {
    ASSERT_EQ(served[k].size(), 64u);
    EXPECT_GE(Cosine(served[k], f32[k]), 0.99) << texts[k];
  }

  const json body = {{"prompt", "Once upon a time"},
                     {"max_tokens", 8},
                     {"temperature", 0},
                     {"ignore_eos", true},
                     {"return_tokens", true}};
  res = client->Post("/generate", body.dump(), "application/json");
  ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "no response") << server.Log();
  const json g = json::parse(res->body);
  EXPECT_EQ(g["usage"]["completion_tokens"], 8) << res->body;
  EXPECT_EQ(g["tokens"].size(), 8u) << res->body;
  EXPECT_EQ(g["finish_reason"], "length") << res->body;
}

}  // namespace
}  // namespace gritserve
