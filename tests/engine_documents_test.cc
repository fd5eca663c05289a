// Document KV reuse is exact: generating over cached documents gives the same
// logits and greedy tokens as one uncached forward pass over documents + prompt
// with the equivalent attention layout and position ids.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <numeric>

#include "gritserve/common/error.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine.h"
#include "gritserve/model/decoder.h"
#include "test_util.h"

namespace gritserve {
namespace {

constexpr int kSteps = 16;

const std::vector<std::string> kDocs = {"The cat sat on the mat and looked at the bird.",
                                        "Paris is the capital of France.",
                                        "Water boils at one hundred degrees Celsius at sea level.",
                                        "def add(a, b):\n    return a + b",
                                        "Mount Everest is the highest mountain on Earth.",
                                        "The quick brown fox jumps over the lazy dog.",
                                        "Photosynthesis turns light into chemical energy.",
                                        "A byte has eight bits."};

class DocumentsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("docs"));
    WriteCheckpoint(*dir_, CheckpointPreset("tiny"));
    EngineOptions o;
    o.model_dir = *dir_;
    o.threads = 2;
    o.dtype = "float32";  // compared with the float32 decoder below to 1e-4
    engine_ = Engine::Load(o).release();
    ModelConfig c = ModelConfig::FromDirectory(*dir_);
    decoder_ = new Decoder(c, LoadWeights(*dir_, c, at::kFloat, at::kCPU));
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete decoder_;
    delete dir_;
  }

  static SamplingParams Greedy() {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = kSteps;
    p.ignore_eos = true;
    p.capture_logits = true;
    return p;
  }

  // The uncached reference: one forward pass per step over documents + prompt
  // + generated tokens, with the layout the cached path stands for.
  static GenerateResult Reference(const std::vector<ResolvedDocument>& docs,
                                  const std::vector<int32_t>& prompt, DocPositions positions,
                                  const Decoder* decoder = decoder_) {
    c10::InferenceMode guard;
    std::vector<int64_t> ids, pos;
    std::vector<AttentionBlock> blocks;
    int64_t offset = 0;
    for (const auto& d : docs) {
      const int64_t n = static_cast<int64_t>(d.ids.size());
      const int64_t start = positions == DocPositions::kSequential ? offset : 0;
      for (int64_t i = 0; i < n; ++i) {
        ids.push_back(d.ids[i]);
        pos.push_back(start + i);
      }
      blocks.push_back({n, d.source == KvSource::kEmbed, /*sees_previous=*/false});
      offset += n;
    }
    for (size_t i = 0; i < prompt.size(); ++i) {
      ids.push_back(prompt[i]);
      pos.push_back(offset + static_cast<int64_t>(i));
    }
    blocks.push_back({static_cast<int64_t>(prompt.size()), false, /*sees_previous=*/true});
    GenerateResult r;
    const int64_t limit = engine_->front().tokenizer().VocabSize();
    for (int step = 0; step < kSteps; ++step) {
      const int64_t t = static_cast<int64_t>(ids.size());
      ForwardInput in;
      in.ids = at::tensor(ids, at::kLong).view({1, t});
      in.positions = at::tensor(pos, at::kLong).view({1, t});
      in.attention = AttentionSpec::Blocks(blocks);
      at::Tensor h = decoder->Forward(in, nullptr)[0];
      at::Tensor logits = decoder->Logits(h.narrow(0, t - 1, 1))[0].contiguous();
      r.step_logits.emplace_back(logits.data_ptr<float>(),
                                 logits.data_ptr<float>() + logits.numel());
      const int64_t next = logits.narrow(0, 0, limit).argmax().item<int64_t>();
      r.tokens.push_back(static_cast<int32_t>(next));
      ids.push_back(next);
      pos.push_back(pos.back() + 1);
      blocks.back().length += 1;
    }
    return r;
  }

  static double MaxLogitDiff(const GenerateResult& a, const GenerateResult& b) {
    double worst = 0;
    EXPECT_EQ(a.step_logits.size(), b.step_logits.size());
    for (size_t s = 0; s < std::min(a.step_logits.size(), b.step_logits.size()); ++s) {
      for (size_t v = 0; v < a.step_logits[s].size(); ++v) {
        worst = std::max(worst,
                         static_cast<double>(std::fabs(a.step_logits[s][v] - b.step_logits[s][v])));
      }
    }
    return worst;
  }

  static std::vector<DocumentRef> Texts(size_t n) {
    std::vector<DocumentRef> refs;
    for (size_t i = 0; i < n; ++i) refs.push_back({"", kDocs[i], {}});
    return refs;
  }

  static std::string* dir_;
  static Engine* engine_;
  static Decoder* decoder_;
};
std::string* DocumentsTest::dir_ = nullptr;
Engine* DocumentsTest::engine_ = nullptr;
Decoder* DocumentsTest::decoder_ = nullptr;

// Under bfloat16 products (what `auto` runs on a CPU with native bfloat16) a
// cached document's rows meet other kernels than in the one uncached pass
// (fewer rows at a time, another summation order), and every layer rounds its
// inputs to bfloat16, which turns a last-bit float32 difference into a
// bfloat16 step now and then. The layouts still agree: the same tokens, and
// logits within a few bfloat16 steps (2^-8 relative) of the largest.
TEST_F(DocumentsTest, CachedEqualsUncachedUnderBfloat16Products) {
  EngineOptions o;
  o.model_dir = *dir_;
  o.threads = 2;
  o.dtype = "bfloat16";
  const auto engine = Engine::Load(o);
  const ModelConfig c = ModelConfig::FromDirectory(*dir_);
  const Decoder bf16(c, LoadWeights(*dir_, c, at::kFloat, at::kCPU, at::kBFloat16), at::kBFloat16);
  const std::vector<int32_t> prompt =
      engine->front().EncodeGenerate("Summarise the documents.", false);
  for (KvSource source : {KvSource::kCausal, KvSource::kEmbed}) {
    const auto docs = engine->front().ResolveDocuments(Texts(3), source);
    const GenerateResult cached = engine->runner().Generate(prompt, Greedy(), nullptr, docs);
    const GenerateResult ref = Reference(docs, prompt, DocPositions::kSequential, &bf16);
    double largest = 0;
    for (const auto& step : ref.step_logits) {
      for (float v : step) largest = std::max(largest, static_cast<double>(std::fabs(v)));
    }
    EXPECT_EQ(cached.tokens, ref.tokens) << KvSourceName(source);
    EXPECT_LT(MaxLogitDiff(cached, ref), 4 * largest / 256) << KvSourceName(source);
    std::cout << KvSourceName(source) << ": max |dlogit| " << MaxLogitDiff(cached, ref)
              << " of max |logit| " << largest << "\n";
  }
}

TEST_F(DocumentsTest, OneCausalDocumentIsPlainPrefixCaching) {
  auto docs = engine_->front().ResolveDocuments(Texts(1), KvSource::kCausal);
  std::vector<int32_t> prompt = engine_->front().EncodeGenerate("What did the cat do?", false);
  std::vector<int32_t> whole = docs[0].ids;
  whole.insert(whole.end(), prompt.begin(), prompt.end());
  GenerateResult plain = engine_->runner().Generate(whole, Greedy());
  // Twice: the first computes and stores the entry, the second reuses it.
  for (int round = 0; round < 2; ++round) {
    GenerateResult cached = engine_->runner().Generate(prompt, Greedy(), nullptr, docs);
    EXPECT_EQ(cached.cached_tokens, static_cast<int64_t>(docs[0].ids.size()));
    EXPECT_EQ(cached.prompt_tokens, static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(cached.tokens, plain.tokens) << "round " << round;
    EXPECT_LT(MaxLogitDiff(cached, plain), 1e-4) << "round " << round;
  }
  EXPECT_GE(engine_->front().document_stats().hits, 1);
}

TEST_F(DocumentsTest, CachedEqualsUncachedLayoutForEverySourceCountAndPlacement) {
  std::vector<int32_t> prompt = engine_->front().EncodeGenerate("Summarise the documents.", false);
  for (KvSource source : {KvSource::kCausal, KvSource::kEmbed}) {
    for (size_t n : {1, 3, 8}) {
      for (DocPositions positions : {DocPositions::kSequential, DocPositions::kComposite}) {
        auto docs = engine_->front().ResolveDocuments(Texts(n), source);
        GenerateResult cached =
            engine_->runner().Generate(prompt, Greedy(), nullptr, docs, positions);
        GenerateResult ref = Reference(docs, prompt, positions);
        const std::string what =
            std::string(KvSourceName(source)) + " x" + std::to_string(n) +
            (positions == DocPositions::kSequential ? " sequential" : " composite");
        EXPECT_EQ(cached.tokens, ref.tokens) << what;
        EXPECT_LT(MaxLogitDiff(cached, ref), 1e-4) << what;
      }
    }
  }
}

TEST_F(DocumentsTest, TheLayoutMatters) {
  // Guards against a comparison that cannot fail: the embed and causal sources,
  // and the two placements, really give different logits.
  std::vector<int32_t> prompt = engine_->front().EncodeGenerate("Summarise the documents.", false);
  auto causal = engine_->front().ResolveDocuments(Texts(3), KvSource::kCausal);
  auto embed = engine_->front().ResolveDocuments(Texts(3), KvSource::kEmbed);
  GenerateResult a = engine_->runner().Generate(prompt, Greedy(), nullptr, causal);
  GenerateResult b =
      engine_->runner().Generate(prompt, Greedy(), nullptr, causal, DocPositions::kComposite);
  GenerateResult c = engine_->runner().Generate(prompt, Greedy(), nullptr, embed);
  // Well above float32 noise (~1e-6) and the 1e-4 tolerance used for equality.
  EXPECT_GT(MaxLogitDiff(a, b), 2e-4);
  EXPECT_GT(MaxLogitDiff(a, c), 2e-4);
}

TEST_F(DocumentsTest, EmbedEntriesAreReusedByIdWithoutRecomputing) {
  std::vector<EncodedPrompt> prompts = {engine_->front().EncodeEmbed(kDocs[0], {}),
                                        engine_->front().EncodeEmbed(kDocs[1], {})};
  auto first = engine_->runner().Embed(prompts, {}, EmbedStore::kKeep, {"doc-a", "doc-b"});
  const DocKvStats before = engine_->front().document_stats();
  // Same vectors again, from the store.
  auto again = engine_->runner().Embed(prompts, {}, EmbedStore::kReuse);
  EXPECT_EQ(again, first);
  EXPECT_EQ(engine_->front().document_stats().hits - before.hits, 2);
  // Generation over the ids uses the embedding pass's K/V as is.
  auto docs =
      engine_->front().ResolveDocuments({{"doc-a", "", {}}, {"doc-b", "", {}}}, KvSource::kEmbed);
  std::vector<int32_t> prompt = engine_->front().EncodeGenerate("Where is Paris?", false);
  const int64_t computed_before = engine_->front().document_stats().computed;
  GenerateResult cached = engine_->runner().Generate(prompt, Greedy(), nullptr, docs);
  EXPECT_EQ(engine_->front().document_stats().computed, computed_before);
  GenerateResult ref = Reference(docs, prompt, DocPositions::kSequential);
  EXPECT_EQ(cached.tokens, ref.tokens);
  EXPECT_LT(MaxLogitDiff(cached, ref), 1e-4);
  EXPECT_THROW(engine_->front().ResolveDocuments({{"no-such-doc", "", {}}}, KvSource::kEmbed),
               Error);
}

}  // namespace
}  // namespace gritserve
