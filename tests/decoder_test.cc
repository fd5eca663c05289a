// Decoder numerics: the reference outputs in tests/fixtures, and the invariants that the
// cache, batching and early-exit paths must keep.
#include "gritserve/model/decoder.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "gritserve/cache/kv_cache.h"
#include "gritserve/common/error.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/small_gemm.h"
#include "gritserve/model/checkpoint_writer.h"
#include "tensor_json.h"
#include "test_util.h"

namespace gritserve {
namespace {

using nlohmann::json;

class DecoderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(2);
    dir_ = testing::FixturesDir() + "/qwen2-tiny";
    config_ = new ModelConfig(ModelConfig::FromDirectory(dir_));
    decoder_ = new Decoder(*config_, LoadWeights(dir_, *config_, at::kFloat, at::kCPU));
    reference_ = new json(json::parse(testing::ReadFile(dir_ + "/reference.json")));
  }
  static void TearDownTestSuite() {
    delete decoder_;
    delete config_;
    delete reference_;
  }

  static at::Tensor Ids(const std::vector<int64_t>& ids) {
    return at::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});  // [1, T]
  }
  static at::Tensor Positions(int64_t start, int64_t n) {
    return at::arange(start, start + n, at::kLong).view({1, n});  // [1, T]
  }
  // Full forward of one sequence without a cache: [T, H]
  static at::Tensor Run(const std::vector<int64_t>& ids, AttentionSpec spec,
                        int64_t start_pos = 0) {
    ForwardInput in;
    in.ids = Ids(ids);
    in.positions = Positions(start_pos, static_cast<int64_t>(ids.size()));
    in.attention = spec;
    return decoder_->Forward(in, nullptr)[0];
  }
  static at::Tensor FromJson(const json& j) { return testing::TensorFromJson(j); }
  static double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>();
  }
  // A decoder built with `var=value` in the environment (kernel choices are
  // read at construction), over `weights` or the fixture's.
  static std::unique_ptr<Decoder> BuiltWith(const char* var, const char* value,
                                            WeightMap weights = {}) {
    if (weights.empty()) weights = LoadWeights(dir_, *config_, at::kFloat, at::kCPU);
    EXPECT_EQ(::setenv(var, value, 1), 0);
    auto d = std::make_unique<Decoder>(*config_, std::move(weights));
    EXPECT_EQ(::unsetenv(var), 0);
    return d;
  }

  // Inputs for comparing two decoders: a random prefix [B, P] to fill their
  // caches, then T random tokens [B, T] whose row 1 is padding from `pad_from` on.
  struct CachedBatch {
    at::Tensor prefix, ids, valid;
  };
  static CachedBatch RandomCachedBatch(int64_t b, int64_t past, int64_t t, int64_t pad_from) {
    CachedBatch batch{at::randint(0, 150000, {b, past}, at::kLong),
                      at::randint(0, 150000, {b, t}, at::kLong), at::ones({b, t}, at::kBool)};
    batch.valid[1].narrow(0, pad_from, t - pad_from).fill_(false);
    return batch;
  }
  // `ids` [B, T] at positions start.. in every row.
  static ForwardInput BatchInput(const at::Tensor& ids, int64_t start, AttentionSpec spec,
                                 const at::Tensor& valid = {}) {
    const int64_t b = ids.size(0), t = ids.size(1);
    ForwardInput in;
    in.ids = ids;
    in.positions = at::arange(start, start + t, at::kLong).repeat({b, 1});
    in.valid = valid;
    in.attention = spec;
    return in;
  }

  c10::InferenceMode guard_;
  static std::string dir_;
  static ModelConfig* config_;
  static Decoder* decoder_;
  static json* reference_;
};
std::string DecoderTest::dir_;
ModelConfig* DecoderTest::config_ = nullptr;
Decoder* DecoderTest::decoder_ = nullptr;
json* DecoderTest::reference_ = nullptr;

TEST_F(DecoderTest, MatchesReferenceHiddenStates) {
  ASSERT_GE((*reference_)["cases"].size(), 1u);
  for (const auto& c : (*reference_)["cases"]) {
    auto ids = c["ids"].get<std::vector<int64_t>>();
    at::Tensor causal = Run(ids, AttentionSpec::Causal());
    at::Tensor bidir = Run(ids, AttentionSpec::Bidirectional());
    EXPECT_LE(MaxDiff(causal, FromJson(c["causal_hidden"])), 2e-4) << c["text"];
    EXPECT_LE(MaxDiff(bidir, FromJson(c["bidirectional_hidden"])), 2e-4) << c["text"];
    at::Tensor mean = bidir.mean(0);
    double cos = at::cosine_similarity(mean, FromJson(c["bidirectional_mean"]), 0).item<double>();
    EXPECT_GE(cos, 0.99999) << c["text"];
  }
}

TEST_F(DecoderTest, GreedyContinuationMatchesReferenceWithKvCache) {
  for (const auto& c : (*reference_)["cases"]) {
    auto ids = c["ids"].get<std::vector<int64_t>>();
    auto expected = c["greedy_tokens"].get<std::vector<int64_t>>();
    KvCache cache = decoder_->NewCache(1);
    std::vector<int64_t> feed = ids, got;
    for (size_t step = 0; step < expected.size(); ++step) {
      ForwardInput in;
      in.ids = Ids(feed);
      in.positions = Positions(cache.length(), static_cast<int64_t>(feed.size()));
      at::Tensor h = decoder_->Forward(in, &cache)[0];  // [T, H]
      at::Tensor logits = decoder_->Logits(h.narrow(0, h.size(0) - 1, 1))[0];
      got.push_back(logits.argmax().item<int64_t>());
      feed = {got.back()};
    }
    EXPECT_EQ(got, expected) << c["text"];
  }
}

TEST_F(DecoderTest, IncrementalDecodeEqualsFullForward) {
  std::vector<int64_t> ids = {9707, 1879, 11, 1246, 525, 498, 3351, 30, 358, 1079, 1661, 13};
  at::Tensor full = Run(ids, AttentionSpec::Causal());  // [T, H]
  KvCache cache = decoder_->NewCache(1);
  std::vector<at::Tensor> rows;
  // Prefill a prefix in one go, then feed the rest one and two tokens at a time.
  size_t i = 0;
  for (size_t chunk : {5, 1, 2, 1, 3}) {
    std::vector<int64_t> part(ids.begin() + i, ids.begin() + i + chunk);
    ForwardInput in;
    in.ids = Ids(part);
    in.positions = Positions(static_cast<int64_t>(i), static_cast<int64_t>(chunk));
    rows.push_back(decoder_->Forward(in, &cache)[0]);
    i += chunk;
  }
  ASSERT_EQ(i, ids.size());
  EXPECT_EQ(cache.length(), static_cast<int64_t>(ids.size()));
  EXPECT_LT(MaxDiff(at::cat(rows, 0), full), 1e-4);
  at::Tensor l1 = decoder_->Logits(full.narrow(0, 11, 1));
  at::Tensor l2 = decoder_->Logits(rows.back().narrow(0, 2, 1));
  EXPECT_LT(MaxDiff(l1, l2), 1e-4);
}

TEST_F(DecoderTest, PaddedBatchEqualsOneAtATime) {
  std::vector<std::vector<int64_t>> seqs = {
      {9707, 1879, 11, 1246, 525, 498, 3351}, {40, 1079}, {151644, 872, 198, 9707, 151645}};
  for (AttentionSpec spec : {AttentionSpec::Causal(), AttentionSpec::Bidirectional()}) {
    const int64_t b = 3, t = 7;
    at::Tensor ids = at::full({b, t}, 151643, at::kLong);  // padding id, masked out below
    at::Tensor valid = at::zeros({b, t}, at::kBool);
    for (int64_t r = 0; r < b; ++r) {
      for (size_t j = 0; j < seqs[r].size(); ++j) {
        ids[r][j] = seqs[r][j];
        valid[r][j] = true;
      }
    }
    ForwardInput in;
    in.ids = ids;
    in.positions = at::arange(t, at::kLong).repeat({b, 1});
    in.valid = valid;
    in.attention = spec;
    at::Tensor batched = decoder_->Forward(in, nullptr);  // [B, T, H]
    for (int64_t r = 0; r < b; ++r) {
      const int64_t n = static_cast<int64_t>(seqs[r].size());
      at::Tensor single = Run(seqs[r], spec);
      EXPECT_LT(MaxDiff(batched[r].narrow(0, 0, n), single), 1e-4)
          << "row " << r << " mode " << static_cast<int>(spec.mode);
    }
  }
}

// The CPU kernels are chosen per call (oneDNN for prompt-sized products where
// the build has it, LibTorch otherwise); whichever runs, the answers agree:
// padded batches, prompts after a KV cache, single decode rows, every mode.
TEST_F(DecoderTest, OneDnnAndLibTorchKernelsAgree) {
  const auto blas_decoder = BuiltWith("GRITSERVE_CPU_GEMM", "blas");
  const Decoder& blas = *blas_decoder;
  at::manual_seed(11);
  const int64_t b = 3, past = 24, t = 20;
  const auto [prefix, ids, valid] = RandomCachedBatch(b, past, t, /*pad_from=*/12);
  for (AttentionSpec spec : {AttentionSpec::Causal(), AttentionSpec::Bidirectional()}) {
    KvCache c1 = decoder_->NewCache(b), c2 = blas.NewCache(b);
    const ForwardInput first = BatchInput(prefix, 0, spec);
    EXPECT_LT(MaxDiff(decoder_->Forward(first, &c1), blas.Forward(first, &c2)), 1e-4);
    const ForwardInput next = BatchInput(ids, past, spec, valid);
    at::Tensor x = decoder_->Forward(next, &c1), y = blas.Forward(next, &c2);  // [B, T, H]
    EXPECT_LT(MaxDiff(x.index({valid}), y.index({valid})), 1e-4)
        << "mode " << static_cast<int>(spec.mode);
    EXPECT_LT(
        MaxDiff(decoder_->Logits(x[0].narrow(0, t - 1, 1)), blas.Logits(y[0].narrow(0, t - 1, 1))),
        1e-4);
  }
}

// The fused CPU kernels (norm, RoPE, SiLU, masked softmax, one-row LM head,
// document placement) against LibTorch's ops: prompts after a cache, padded
// batches, decode rows, early-exit layer outputs and moved document keys.
TEST_F(DecoderTest, FusedAndLibTorchElementwiseKernelsAgree) {
  const auto plain_decoder = BuiltWith("GRITSERVE_CPU_KERNELS", "aten");
  const Decoder& plain = *plain_decoder;
  at::manual_seed(12);
  const int64_t b = 2, past = 19, t = 9;
  const auto [prefix, ids, valid] = RandomCachedBatch(b, past, t, /*pad_from=*/5);
  for (AttentionSpec spec : {AttentionSpec::Causal(), AttentionSpec::Bidirectional()}) {
    KvCache c1 = decoder_->NewCache(b), c2 = plain.NewCache(b);
    const ForwardInput first = BatchInput(prefix, 0, spec);
    std::vector<at::Tensor> l1, l2;
    EXPECT_LT(MaxDiff(decoder_->Forward(first, &c1, &l1), plain.Forward(first, &c2, &l2)), 1e-4);
    ASSERT_EQ(l1.size(), l2.size());
    for (size_t i = 0; i < l1.size(); ++i) EXPECT_LT(MaxDiff(l1[i], l2[i]), 1e-4) << "layer " << i;
    int64_t pos = past;
    for (int64_t step_tokens : {t, int64_t{1}}) {  // a prompt, then a decode row
      const ForwardInput next =
          BatchInput(ids.narrow(1, 0, step_tokens), pos, spec, valid.narrow(1, 0, step_tokens));
      at::Tensor x = decoder_->Forward(next, &c1), y = plain.Forward(next, &c2);  // [B, T, H]
      EXPECT_LT(MaxDiff(x.index({next.valid}), y.index({next.valid})), 1e-4);
      EXPECT_LT(MaxDiff(decoder_->Logits(x[0].narrow(0, step_tokens - 1, 1)),
                        plain.Logits(y[0].narrow(0, step_tokens - 1, 1))),
                1e-4);
      pos += step_tokens;
    }
    for (int64_t l = 0; l < c1.num_layers(); ++l) {
      EXPECT_LT(MaxDiff(c1.keys(l), c2.keys(l)), 1e-4);
      EXPECT_LT(MaxDiff(c1.values(l), c2.values(l)), 1e-4);
    }
  }
  // Stored document K/V placed 37 positions on, with both kernel families.
  KvCache doc = decoder_->NewCache(1);
  ForwardInput in;
  in.ids = prefix.narrow(0, 0, 1);
  in.positions = at::arange(past, at::kLong).unsqueeze(0);
  decoder_->Forward(in, &doc);
  std::vector<at::Tensor> ks, vs;
  for (int64_t l = 0; l < doc.num_layers(); ++l) {
    ks.push_back(doc.keys(l)[0].contiguous());
    vs.push_back(doc.values(l)[0].contiguous());
  }
  KvCache p1 = decoder_->NewCache(1), p2 = plain.NewCache(1);
  auto [k1, v1] = p1.Slots(past);
  auto [k2, v2] = p2.Slots(past);
  decoder_->PlaceKv(k1, ks, v1, vs, 37);
  plain.PlaceKv(k2, ks, v2, vs, 37);
  for (int64_t l = 0; l < doc.num_layers(); ++l) {
    EXPECT_LT(MaxDiff(k1[l], k2[l]), 1e-5);
    EXPECT_LT(MaxDiff(k1[l][0], decoder_->RotateKeys(ks[l], 37)), 1e-5);
    EXPECT_TRUE(at::equal(v1[l][0], vs[l]));
  }
}

// At head_dim 64 (Qwen2.5's) prompt-sized attention runs as one fused CPU
// pass (cpu_attention); the fixture's head_dim 16 never reaches it. Against
// LibTorch's three steps on a random checkpoint of that shape: a padded batch
// after a cache longer than one softmax chunk, bidirectional rows, and the
// cached-documents layout (documents bidirectional in blocks, the prompt
// causal over all of them).
TEST_F(DecoderTest, FusedAttentionMatchesLibTorchAtHeadDim64) {
  const ModelConfig config = ModelConfig::FromJsonText(json{
      {"architectures", {"Qwen2ForCausalLM"}},
      {"hidden_size", 256},
      {"intermediate_size", 64},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"vocab_size", 97},
      {"tie_word_embeddings", true},
      {"bos_token_id", 1},
      {"eos_token_id", 2}}.dump());
  ASSERT_EQ(config.head_dim, 64);
  const std::string dir = testing::MakeTempDir("decoder_hd64");
  RandomWeightsOptions options;
  options.seed = 5;
  options.init_std = 0.1f;  // peaked attention: the softmax's maximum matters
  WriteRandomCheckpoint(dir, config, options);
  auto load = [&] { return LoadWeights(dir, config, at::kFloat, at::kCPU); };
  EXPECT_EQ(::setenv("GRITSERVE_CPU_KERNELS", "aten", 1), 0);
  const Decoder plain(config, load());
  EXPECT_EQ(::unsetenv("GRITSERVE_CPU_KERNELS"), 0);
  // The checks, for one fused decoder.
  auto expect_matches_plain = [&](const Decoder& fused) {
    at::manual_seed(13);
    const int64_t b = 2, past = 300, t = 12;
    CachedBatch batch{at::randint(3, 97, {b, past}, at::kLong),
                      at::randint(3, 97, {b, t}, at::kLong), at::ones({b, t}, at::kBool)};
    batch.valid[1].narrow(0, 7, t - 7).fill_(false);
    for (AttentionSpec spec : {AttentionSpec::Causal(), AttentionSpec::Bidirectional()}) {
      KvCache c1 = fused.NewCache(b), c2 = plain.NewCache(b);
      const ForwardInput first = BatchInput(batch.prefix, 0, spec);
      EXPECT_LT(MaxDiff(fused.Forward(first, &c1), plain.Forward(first, &c2)), 1e-4);
      const ForwardInput next = BatchInput(batch.ids, past, spec, batch.valid);
      const at::Tensor x = fused.Forward(next, &c1), y = plain.Forward(next, &c2);  // [B, T, H]
      EXPECT_LT(MaxDiff(x.index({batch.valid}), y.index({batch.valid})), 1e-4)
          << "mode " << static_cast<int>(spec.mode);
      EXPECT_LT(
          MaxDiff(fused.Logits(x[0].narrow(0, t - 1, 1)), plain.Logits(y[0].narrow(0, t - 1, 1))),
          1e-4);
    }
    // Two documents (bidirectional blocks) cached, then a prompt over both.
    const AttentionSpec docs = AttentionSpec::Blocks({{180, true, false}, {120, true, false}});
    const AttentionSpec prompt =
        AttentionSpec::Blocks({{180, true, false}, {120, true, false}, {t, false, true}});
    KvCache c1 = fused.NewCache(1), c2 = plain.NewCache(1);
    const ForwardInput first = BatchInput(batch.prefix.narrow(0, 0, 1), 0, docs);
    EXPECT_LT(MaxDiff(fused.Forward(first, &c1), plain.Forward(first, &c2)), 1e-4);
    const ForwardInput next = BatchInput(batch.ids.narrow(0, 0, 1), past, prompt);
    const at::Tensor x = fused.Forward(next, &c1), y = plain.Forward(next, &c2);  // [1, T, H]
    EXPECT_LT(MaxDiff(x, y), 1e-4);
    EXPECT_LT(
        MaxDiff(fused.Logits(x[0].narrow(0, t - 1, 1)), plain.Logits(y[0].narrow(0, t - 1, 1))),
        1e-4);
  };
  // The fused decoder on each vector ISA the CPU has (the one-pass attention's
  // AVX-512 and AVX2 copies), built and run under that ISA.
  for (const kernels::Isa isa : {kernels::Isa::kAvx512, kernels::Isa::kAvx2}) {
    if (!kernels::CpuHas(isa)) continue;
    SCOPED_TRACE(kernels::IsaName(isa));
    const kernels::ScopedIsa scoped(isa);
    const Decoder fused(config, load());
    expect_matches_plain(fused);
  }
}

// Several sequences through one ForwardMany (shared linear layers, attention
// per cache) equal each through Forward on its own: different cache lengths,
// decode rows and a 3-token step, with either kernel family.
TEST_F(DecoderTest, ForwardManyEqualsEachSequenceAlone) {
  const auto plain_decoder = BuiltWith("GRITSERVE_CPU_KERNELS", "aten");
  const Decoder& plain = *plain_decoder;
  at::manual_seed(13);
  for (const Decoder* d : std::vector<const Decoder*>{decoder_, &plain}) {
    const std::vector<int64_t> pasts = {5, 17, 0, 9}, steps = {1, 1, 3, 1};
    std::vector<KvCache> alone, together;
    std::vector<ForwardInput> inputs;
    for (size_t i = 0; i < pasts.size(); ++i) {
      alone.push_back(d->NewCache(1));
      if (pasts[i] > 0) {
        ForwardInput pre;
        pre.ids = at::randint(0, 150000, {1, pasts[i]}, at::kLong);
        pre.positions = at::arange(pasts[i], at::kLong).unsqueeze(0);
        d->Forward(pre, &alone.back());
      }
      KvCache copy = d->NewCache(1);  // a deep copy: both get appended to
      if (pasts[i] > 0) {
        std::vector<at::Tensor> ks, vs;
        for (int64_t l = 0; l < alone.back().num_layers(); ++l) {
          ks.push_back(alone.back().keys(l).clone());
          vs.push_back(alone.back().values(l).clone());
        }
        copy.AppendAll(ks, vs, at::ones({1, pasts[i]}, at::kBool));
      }
      together.push_back(std::move(copy));
      ForwardInput in;
      in.ids = at::randint(0, 150000, {1, steps[i]}, at::kLong);
      in.positions = at::arange(pasts[i], pasts[i] + steps[i], at::kLong).unsqueeze(0);
      inputs.push_back(in);
    }
    std::vector<KvCache*> caches;
    for (auto& c : together) caches.push_back(&c);
    at::Tensor many = d->ForwardMany(inputs, caches);  // [sum T_i, H]
    int64_t row = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      at::Tensor one = d->Forward(inputs[i], &alone[i])[0];  // [T_i, H]
      EXPECT_LT(MaxDiff(many.narrow(0, row, steps[i]), one), 1e-4) << "sequence " << i;
      EXPECT_EQ(together[i].length(), alone[i].length());
      row += steps[i];
    }
    EXPECT_EQ(row, many.size(0));
    at::Tensor bad = inputs[0].ids;
    inputs[0].ids = at::zeros({2, 1}, at::kLong);  // a batch of two is not one sequence
    EXPECT_THROW(d->ForwardMany(inputs, caches), std::exception);
    inputs[0].ids = bad;
  }
}

// Weights that are bfloat16 numbers (a bfloat16 checkpoint run in float32):
// the LM head and tied embedding table are held in bfloat16, exactly, as are
// the layers' matrices where the bfloat16-panel kernel runs, and hidden
// states and logits equal those of the float32-held model.
TEST_F(DecoderTest, Bfloat16ValuedHeadIsHeldInBfloat16Exactly) {
  WeightMap w = LoadWeights(dir_, *config_, at::kFloat, at::kCPU);
  {
    WeightMap off = LoadWeights(dir_, *config_, at::kFloat, at::kCPU);
    at::Tensor& e = off.at("model.embed_tokens.weight");
    e.add_(at::randn(e.sizes()) * 1e-3);  // no longer bfloat16 numbers
    EXPECT_FALSE(Decoder(*config_, std::move(off)).lm_head_in_bfloat16());
  }
  for (auto& [name, t] : w) t = t.to(at::kBFloat16).to(at::kFloat);  // round every value
  WeightMap w2;
  for (auto& [name, t] : w) w2[name] = t.clone();
  Decoder held(*config_, std::move(w));
  const auto plain_decoder = BuiltWith("GRITSERVE_CPU_KERNELS", "aten", std::move(w2));
  const Decoder& plain = *plain_decoder;
  EXPECT_TRUE(held.lm_head_in_bfloat16());
  EXPECT_FALSE(plain.lm_head_in_bfloat16());
  const int64_t matrices = 4 * config_->num_hidden_layers;
  EXPECT_EQ(held.layer_matrices_in_bfloat16(),
            std::make_pair(Linear::Bfloat16PanelsAvailable() ? matrices : 0, matrices));
  EXPECT_EQ(plain.layer_matrices_in_bfloat16().first, 0);
  ForwardInput in;
  in.ids = Ids({9707, 1879, 11, 1246, 525, 151643});
  in.positions = Positions(0, 6);
  at::Tensor a = held.Forward(in, nullptr)[0], b = plain.Forward(in, nullptr)[0];  // [T, H]
  EXPECT_LT(MaxDiff(a, b), 1e-4);
  EXPECT_LT(MaxDiff(held.Logits(a), plain.Logits(b)), 1e-4);
  EXPECT_LT(MaxDiff(held.Logits(a.narrow(0, 5, 1)), plain.Logits(b.narrow(0, 5, 1))), 1e-4);
}

// With bfloat16 products (what `auto` runs on a CPU with native bfloat16) the
// tied embedding table of a bfloat16 checkpoint is held in bfloat16 (exactly)
// beside the head packed for oneDNN, not in float32. The head's logits are
// bfloat16 products: within two bfloat16 roundings of each term's size of a
// float64 product.
TEST_F(DecoderTest, Bfloat16ProductsHoldABfloat16ValuedTableInBfloat16) {
  const Decoder d(*config_, LoadWeights(dir_, *config_, at::kFloat, at::kCPU, at::kBFloat16),
                  at::kBFloat16);
  ASSERT_EQ(d.matmul_dtype(), at::kBFloat16);
  ASSERT_TRUE(config_->tie_word_embeddings);
  EXPECT_TRUE(d.embeddings_in_bfloat16());
  const at::Tensor table = LoadWeights(dir_, *config_, at::kFloat, at::kCPU)
                               .at("model.embed_tokens.weight")
                               .to(at::kDouble);  // [V, H]
  at::manual_seed(5);
  const at::Tensor h = at::randn({3, config_->hidden_size});                      // [3, H]
  const at::Tensor want = at::matmul(h.to(at::kDouble), table.t());               // [3, V]
  const at::Tensor scale = at::matmul(h.to(at::kDouble).abs(), table.abs().t());  // [3, V]
  const at::Tensor err = (d.Logits(h).to(at::kDouble) - want).abs();
  EXPECT_TRUE(err.le(scale * (2.0 / 256)).all().item<bool>()) << (err / scale).max().item<double>();
  EXPECT_GT(err.max().item<double>(), 0.0) << "bfloat16 products round";
}

// The fixture's matrices loaded as stored (bfloat16), as the engine does for a
// float32 model on an AVX-512 or AVX2 CPU: the same model as loading them widened.
TEST_F(DecoderTest, Bfloat16LoadedMatricesGiveTheFloat32LoadedModel) {
  auto kept_weights = [&] {
    return LoadWeights(dir_, *config_, at::kFloat, at::kCPU, at::ScalarType::Undefined,
                       /*keep_bfloat16_matrices=*/true);
  };
  const int64_t matrices = 4 * config_->num_hidden_layers;
  // The default kernels, and the AVX2 panels (their sibling) where the CPU has both.
  const auto kept = BuiltWith("GRITSERVE_CPU_ISA", "", kept_weights());
  const auto kept_avx2 = BuiltWith("GRITSERVE_CPU_ISA", "avx2", kept_weights());
  EXPECT_EQ(kept->layer_matrices_in_bfloat16().first,
            Linear::Bfloat16PanelsAvailable() ? matrices : 0);
  EXPECT_EQ(kept_avx2->layer_matrices_in_bfloat16().first, kernels::CpuHasAvx2() ? matrices : 0);
  const auto plain_decoder = BuiltWith("GRITSERVE_CPU_KERNELS", "aten");
  ForwardInput in;
  in.ids = Ids({9707, 1879, 11, 1246, 525, 151643, 30, 4});
  in.positions = Positions(0, 8);
  for (AttentionMode mode : {AttentionMode::kCausal, AttentionMode::kBidirectional}) {
    in.attention.mode = mode;
    const at::Tensor b = plain_decoder->Forward(in, nullptr)[0];
    for (const Decoder* d : {kept.get(), kept_avx2.get()}) {
      const at::Tensor a = d->Forward(in, nullptr)[0];
      EXPECT_LT(MaxDiff(a, b), 1e-4);
      EXPECT_LT(MaxDiff(d->Logits(a), plain_decoder->Logits(b)), 1e-4);
      EXPECT_LT(MaxDiff(d->Logits(a.narrow(0, 7, 1)), plain_decoder->Logits(b.narrow(0, 7, 1))),
                1e-4);  // one row: the decode-step tile
    }
  }
}

// A prompt whose next-token logits are all that is wanted: the last layer
// finishes only the last position of each row, and the cache gets the very
// keys and values the full pass stores.
TEST_F(DecoderTest, LastPositionOnlyEqualsTheLastRowAndFillsTheSameCache) {
  const auto plain_decoder = BuiltWith("GRITSERVE_CPU_KERNELS", "aten");
  at::manual_seed(29);
  for (const Decoder* d : std::vector<const Decoder*>{decoder_, plain_decoder.get()}) {
    for (const int64_t batch : {1, 2}) {
      KvCache full_cache = d->NewCache(batch), last_cache = d->NewCache(batch);
      at::Tensor full, last;               // [B, T, H], [B, 1, H] of the second chunk
      for (const int64_t past : {0, 7}) {  // a first chunk, then one after it
        ForwardInput in;
        const int64_t t = past == 0 ? 7 : 19;
        in.ids = at::randint(0, 150000, {batch, t}, at::kLong);
        in.positions = at::arange(past, past + t, at::kLong).expand({batch, t}).contiguous();
        full = d->Forward(in, &full_cache);
        in.last_position_only = true;
        last = d->Forward(in, &last_cache);
      }
      ASSERT_EQ(last.sizes(), (std::vector<int64_t>{batch, 1, config_->hidden_size}));
      EXPECT_LT(MaxDiff(last, full.narrow(1, 18, 1)), 1e-5) << "batch " << batch;
      ASSERT_EQ(last_cache.length(), full_cache.length());
      for (int64_t l = 0; l < full_cache.num_layers(); ++l) {
        EXPECT_TRUE(at::equal(last_cache.keys(l), full_cache.keys(l))) << "layer " << l;
        EXPECT_TRUE(at::equal(last_cache.values(l), full_cache.values(l))) << "layer " << l;
      }
    }
    // The batched pass of several sequences keeps each one's last position.
    std::vector<ForwardInput> inputs;
    std::vector<KvCache> full_caches, last_caches;
    for (const int64_t t : {4, 1, 6}) {
      ForwardInput in;
      in.ids = at::randint(0, 150000, {1, t}, at::kLong);
      in.positions = Positions(0, t);
      inputs.push_back(in);
      full_caches.push_back(d->NewCache(1));
      last_caches.push_back(d->NewCache(1));
    }
    std::vector<KvCache*> full_ptrs, last_ptrs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      full_ptrs.push_back(&full_caches[i]);
      last_ptrs.push_back(&last_caches[i]);
    }
    at::Tensor all = d->ForwardMany(inputs, full_ptrs);                                  // [11, H]
    at::Tensor lasts = d->ForwardMany(inputs, last_ptrs, /*last_positions_only=*/true);  // [3, H]
    ASSERT_EQ(lasts.size(0), 3);
    EXPECT_LT(MaxDiff(lasts, all.index_select(0, at::tensor({3, 4, 10}, at::kLong))), 1e-5);
    for (size_t i = 0; i < inputs.size(); ++i) {
      EXPECT_TRUE(at::equal(last_caches[i].keys(0), full_caches[i].keys(0)));
      EXPECT_TRUE(at::equal(last_caches[i].values(1), full_caches[i].values(1)));
    }
  }
  ForwardInput in;
  in.ids = Ids({1, 2, 3});
  in.positions = Positions(0, 3);
  in.last_position_only = true;
  std::vector<at::Tensor> outputs;
  EXPECT_THROW(decoder_->Forward(in, nullptr, &outputs), std::exception);
}

// Weights are immutable and request state is passed in, so callers on several
// threads at once must each get their own answer, prompt-sized attention
// products (oneDNN, with packed operands in a scratchpad) included.
TEST_F(DecoderTest, ConcurrentForwardsFromSeveralThreadsEqualSerialOnes) {
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < 4; ++i) {
    std::vector<int64_t> ids;
    for (int64_t j = 0; j < 20 + 7 * i; ++j) ids.push_back(100 + 37 * j + 1000 * i);
    prompts.push_back(ids);
  }
  std::vector<at::Tensor> serial;
  for (const auto& ids : prompts) serial.push_back(Run(ids, AttentionSpec::Causal()));
  std::vector<double> worst(prompts.size(), 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      c10::InferenceMode guard;
      for (int rep = 0; rep < 10; ++rep) {
        worst[i] = std::max(worst[i], MaxDiff(Run(prompts[i], AttentionSpec::Causal()), serial[i]));
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_LT(worst[i], 1e-4) << "caller " << i;
}

TEST_F(DecoderTest, EarlyExitEqualsIntermediateHiddenState) {
  std::vector<int64_t> ids = {9707, 1879, 11, 1246, 525};
  ForwardInput in;
  in.ids = Ids(ids);
  in.positions = Positions(0, 5);
  in.attention = AttentionSpec::Bidirectional();
  std::vector<at::Tensor> layers;
  at::Tensor full = decoder_->Forward(in, nullptr, &layers);
  ASSERT_EQ(layers.size(), static_cast<size_t>(config_->num_hidden_layers + 1));
  for (int64_t n = 1; n <= config_->num_hidden_layers; ++n) {
    ForwardInput early = in;
    early.num_layers = n;
    early.apply_final_norm = false;
    EXPECT_LT(MaxDiff(decoder_->Forward(early, nullptr), layers[n]), 1e-5) << "layer " << n;
  }
  // The layers really differ, so the comparison above can fail.
  EXPECT_GT(MaxDiff(layers[1], layers[2]), 1e-2);
  ForwardInput last = in;
  last.num_layers = config_->num_hidden_layers;
  EXPECT_LT(MaxDiff(decoder_->Forward(last, nullptr), full), 1e-6);
}

TEST_F(DecoderTest, CausalIgnoresTheFutureBidirectionalDoesNot) {
  std::vector<int64_t> a = {9707, 1879, 11, 1246, 525, 498};
  std::vector<int64_t> b = a;
  b[4] = 3351;
  b[5] = 30;
  at::Tensor ca = Run(a, AttentionSpec::Causal()), cb = Run(b, AttentionSpec::Causal());
  EXPECT_LT(MaxDiff(ca.narrow(0, 0, 4), cb.narrow(0, 0, 4)), 1e-6);
  EXPECT_GT(MaxDiff(ca.narrow(0, 4, 2), cb.narrow(0, 4, 2)), 1e-3);
  at::Tensor ba = Run(a, AttentionSpec::Bidirectional());
  at::Tensor bb = Run(b, AttentionSpec::Bidirectional());
  EXPECT_GT(MaxDiff(ba.narrow(0, 0, 4), bb.narrow(0, 0, 4)), 1e-3);
}

TEST_F(DecoderTest, BlocksLayoutIsolatesDocumentsAndMatchesSeparatePasses) {
  std::vector<int64_t> d1 = {9707, 1879, 11}, d2 = {1246, 525, 498, 3351}, q = {30, 358};
  std::vector<int64_t> all = d1;
  all.insert(all.end(), d2.begin(), d2.end());
  all.insert(all.end(), q.begin(), q.end());
  AttentionSpec spec =
      AttentionSpec::Blocks({{3, true, false}, {4, true, false}, {2, false, true}});
  at::Tensor h = Run(all, spec);  // [9, H]
  // Each bidirectional document block equals a bidirectional pass over it alone
  // at the same positions.
  EXPECT_LT(MaxDiff(h.narrow(0, 0, 3), Run(d1, AttentionSpec::Bidirectional())), 1e-5);
  EXPECT_LT(MaxDiff(h.narrow(0, 3, 4), Run(d2, AttentionSpec::Bidirectional(), 3)), 1e-5);
  // A single causal block that sees nothing before it is plain causal attention.
  AttentionSpec one = AttentionSpec::Blocks({{9, false, false}});
  EXPECT_LT(MaxDiff(Run(all, one), Run(all, AttentionSpec::Causal())), 1e-6);
  // The prompt sees the documents: it differs from the prompt alone.
  EXPECT_GT(MaxDiff(h.narrow(0, 7, 2), Run(q, AttentionSpec::Causal(), 7)), 1e-3);
}

TEST_F(DecoderTest, RotatingCachedKeysEqualsComputingThemAtTheNewPositions) {
  std::vector<int64_t> ids = {9707, 1879, 11, 1246, 525};
  const int64_t delta = 37;
  KvCache at0 = decoder_->NewCache(1), at_delta = decoder_->NewCache(1);
  ForwardInput in;
  in.ids = Ids(ids);
  in.positions = Positions(0, 5);
  decoder_->Forward(in, &at0);
  in.positions = Positions(delta, 5);
  decoder_->Forward(in, &at_delta);
  for (int64_t l = 0; l < config_->num_hidden_layers; ++l) {
    at::Tensor moved = decoder_->RotateKeys(at0.keys(l), delta);
    EXPECT_LT(MaxDiff(moved, at_delta.keys(l)), 1e-5) << "layer " << l;
    EXPECT_GT(MaxDiff(at0.keys(l), at_delta.keys(l)), 1e-3);      // rotation matters
    EXPECT_LT(MaxDiff(at0.values(l), at_delta.values(l)), 1e-5);  // values carry no position
  }
}

// RoPE's cos and sin come from a table built at load for positions within the
// context; past its end they are computed per pass. A long greedy generation,
// one token a step and past the cache's reserved room (its buffers move
// twice), gives the same logits bit for bit as a decoder whose table is empty,
// and the last step's equal one full forward over the whole sequence.
TEST_F(DecoderTest, TabulatedRopeDecodeEqualsComputedAnglesAndTheFullForward) {
  ModelConfig untabulated = *config_;
  untabulated.max_position_embeddings = 1;  // only position 0 in the table
  Decoder computed(untabulated, LoadWeights(dir_, *config_, at::kFloat, at::kCPU));
  KvCache a = decoder_->NewCache(1), b = computed.NewCache(1);
  a.Reserve(40);
  b.Reserve(40);
  std::vector<int64_t> feed = {9707, 1879, 11, 1246, 525, 498, 3351, 30}, all = feed;
  at::Tensor logits;  // [1, V] of the last step
  for (int step = 0; step < 100; ++step) {
    ForwardInput in;
    in.ids = Ids(feed);
    in.positions = Positions(a.length(), static_cast<int64_t>(feed.size()));
    in.attention = AttentionSpec::Causal();
    in.last_position_only = true;
    logits = decoder_->Logits(decoder_->Forward(in, &a)[0]);
    ASSERT_TRUE(at::equal(logits, computed.Logits(computed.Forward(in, &b)[0]))) << "step " << step;
    feed = {logits.argmax().item<int64_t>()};
    all.push_back(feed[0]);
  }
  EXPECT_EQ(a.length(), 107);
  EXPECT_EQ(a.capacity(), 160);
  all.pop_back();                                             // the last token was sampled, not fed
  const at::Tensor full = Run(all, AttentionSpec::Causal());  // [T, H]
  EXPECT_LT(MaxDiff(decoder_->Logits(full.narrow(0, full.size(0) - 1, 1)), logits), 1e-4);
}

// A decode step's mask comes straight from the stored validity flags and the
// window's start. With a window of 5 on the second layer, one-token steps
// equal the full forward (whose masks come from per-token key intervals),
// and the window does change the answer.
TEST_F(DecoderTest, WindowedDecodeStepsEqualTheFullForward) {
  ModelConfig windowed = *config_;
  windowed.sliding_window = 5;
  windowed.window_from_layer = 1;
  Decoder d(windowed, LoadWeights(dir_, *config_, at::kFloat, at::kCPU));
  const std::vector<int64_t> ids = {9707, 1879, 11, 1246, 525, 498, 3351, 30, 358, 1079, 1661, 13};
  const int64_t n = static_cast<int64_t>(ids.size()), prefill = 3;
  ForwardInput whole;
  whole.ids = Ids(ids);
  whole.positions = Positions(0, n);
  whole.attention = AttentionSpec::Causal();
  const at::Tensor full = d.Forward(whole, nullptr)[0];  // [T, H]
  EXPECT_GT(MaxDiff(full, Run(ids, AttentionSpec::Causal())), 1e-3);
  KvCache cache = d.NewCache(1);
  for (int64_t i = 0; i < n; i += i == 0 ? prefill : 1) {
    const int64_t t = i == 0 ? prefill : 1;
    ForwardInput in;
    in.ids = Ids(std::vector<int64_t>(ids.begin() + i, ids.begin() + i + t));
    in.positions = Positions(i, t);
    in.attention = AttentionSpec::Causal();
    const at::Tensor rows = d.Forward(in, &cache)[0];  // [t, H]
    EXPECT_LT(MaxDiff(rows, full.narrow(0, i, t)), 1e-4) << "token " << i;
  }
}

// Decode steps of a padded batch: each row's step sees its own valid keys
// only, and equals that row run alone without padding.
TEST_F(DecoderTest, DecodeStepsOfAPaddedBatchEqualEachRowAlone) {
  const std::vector<std::vector<int64_t>> prompts = {{9707, 1879, 11, 1246, 525}, {40, 1079}};
  const std::vector<std::vector<int64_t>> steps = {{498, 3351, 30}, {358, 1661, 13}};
  at::Tensor ids = at::full({2, 5}, 151643, at::kLong);  // [B, T], padding masked out below
  at::Tensor valid = at::zeros({2, 5}, at::kBool);
  for (int64_t r = 0; r < 2; ++r) {
    for (size_t j = 0; j < prompts[r].size(); ++j) {
      ids[r][j] = prompts[r][j];
      valid[r][j] = true;
    }
  }
  KvCache cache = decoder_->NewCache(2);
  ForwardInput in;
  in.ids = ids;
  in.positions = at::arange(5, at::kLong).repeat({2, 1});
  in.valid = valid;
  in.attention = AttentionSpec::Causal();
  decoder_->Forward(in, &cache);
  for (size_t k = 0; k < steps[0].size(); ++k) {
    const auto s = static_cast<int64_t>(k);
    ForwardInput step;
    step.ids = at::tensor({steps[0][k], steps[1][k]}, at::kLong).view({2, 1});  // [B, 1]
    step.positions = at::tensor({5 + s, 2 + s}, at::kLong).view({2, 1});        // [B, 1]
    step.attention = AttentionSpec::Causal();
    const at::Tensor h = decoder_->Forward(step, &cache);  // [B, 1, H]
    for (int64_t r = 0; r < 2; ++r) {
      std::vector<int64_t> alone = prompts[r];
      alone.insert(alone.end(), steps[r].begin(), steps[r].begin() + s + 1);
      const at::Tensor expected = Run(alone, AttentionSpec::Causal());  // [T, H]
      EXPECT_LT(MaxDiff(h[r], expected.narrow(0, expected.size(0) - 1, 1)), 1e-4)
          << "row " << r << " step " << k;
    }
  }
}

// A generation reserves its final length once: exactly that room, appends
// within it never move the buffers, and past it the room doubles with the
// stored keys and values carried over.
TEST(KvCacheTest, ReserveHoldsExactlyTheRoomAskedForAndAppendsWithinItNeverCopy) {
  c10::InferenceMode guard;
  KvCache cache(/*num_layers=*/2, /*batch=*/1, /*num_kv_heads=*/2, /*head_dim=*/4, at::kFloat,
                at::kCPU, /*masked=*/-1e30f);
  cache.Reserve(40);
  EXPECT_EQ(cache.capacity(), 40);
  const void* keys = nullptr;
  for (int64_t i = 0; i <= 40; ++i) {
    const at::Tensor k = at::full({1, 2, 1, 4}, static_cast<float>(i));  // [B, Hkv, 1, D]
    for (int64_t l = 0; l < 2; ++l) cache.Append(l, k, k + 100);
    cache.Advance(at::ones({1, 1}, at::kBool));
    if (i == 0) keys = cache.keys(0).data_ptr();
    if (i < 40) {
      EXPECT_EQ(cache.keys(0).data_ptr(), keys) << "token " << i;
    }
  }
  EXPECT_EQ(cache.capacity(), 80);
  EXPECT_NE(cache.keys(0).data_ptr(), keys);
  const at::Tensor stored = at::arange(41, at::kFloat);  // token i's keys are all i
  EXPECT_TRUE(at::equal(cache.keys(1)[0][1].select(1, 3), stored));
  EXPECT_TRUE(at::equal(cache.values(0)[0][0].select(1, 0), stored + 100));
}

// The validity flags a forward pass sees are the stored ones with the new
// tokens' written after them: a view, no concatenation.
TEST(KvCacheTest, KeyValidWithRecordsTheNewFlagsAfterTheStoredOnes) {
  c10::InferenceMode guard;
  KvCache cache(/*num_layers=*/1, /*batch=*/2, /*num_kv_heads=*/1, /*head_dim=*/4, at::kFloat,
                at::kCPU, /*masked=*/-1e30f);
  const at::Tensor v0 = at::tensor({1, 1, 1, 0}, at::kLong).to(at::kBool).view({2, 2});  // [B, 2]
  EXPECT_TRUE(at::equal(cache.KeyValidWith(v0), v0));
  const at::Tensor kv = at::zeros({2, 1, 2, 4});  // [B, Hkv, 2, D]
  cache.Append(0, kv, kv);
  cache.Advance(v0);
  const at::Tensor v1 = at::tensor({0, 1}, at::kLong).to(at::kBool).view({2, 1});  // [B, 1]
  const at::Tensor seen = cache.KeyValidWith(v1);                                  // [B, 3]
  EXPECT_TRUE(at::equal(seen, at::cat({v0, v1}, 1)));
  EXPECT_EQ(cache.length(), 2);
  EXPECT_EQ(seen.data_ptr(), cache.key_valid().data_ptr());
}

// A one-token step's mask is the cache's additive flags, kept beside the
// boolean ones as tokens come: equal to the mask built from the flags, a view
// that does not move between steps within the room, carried over when the
// room grows, and committed only by Commit.
TEST(KvCacheTest, AdditiveFlagsFollowTheValidityFlagsThroughStepsAndGrowth) {
  c10::InferenceMode guard;
  constexpr float kMasked = -1e30f;
  KvCache cache(/*num_layers=*/1, /*batch=*/2, /*num_kv_heads=*/1, /*head_dim=*/4, at::kFloat,
                at::kCPU, kMasked);
  auto expected = [&](const at::Tensor& flags) {  // [B, S] bool -> [B, S] float
    return at::zeros(flags.sizes()).masked_fill_(flags.logical_not(), kMasked);
  };
  // A padded prompt, then steps in which row 1 sometimes holds padding.
  const at::Tensor prompt = at::tensor({0, 1, 1, 1, 1, 1}, at::kLong).to(at::kBool).view({2, 3});
  at::Tensor all = prompt;
  cache.KeyValidWith(prompt);
  cache.Append(0, at::zeros({2, 1, 3, 4}), at::zeros({2, 1, 3, 4}));
  cache.Commit(3);
  const void* before = nullptr;
  for (int64_t i = 0; i < 70; ++i) {  // past the first room of 64
    const at::Tensor step =
        at::tensor({1, i % 3 != 0 ? 1 : 0}, at::kLong).to(at::kBool).view({2, 1});  // [B, 1]
    all = at::cat({all, step}, 1);
    const at::Tensor seen = cache.KeyValidWith(step);
    const at::Tensor additive = cache.AdditiveWith(1);  // [B, S]
    ASSERT_TRUE(at::equal(seen, all)) << "step " << i;
    ASSERT_TRUE(at::equal(additive, expected(all))) << "step " << i;
    if (i == 0) before = additive.data_ptr();
    if (cache.capacity() == 64) {
      EXPECT_EQ(additive.data_ptr(), before) << "step " << i;
    }
    EXPECT_THROW(cache.AdditiveWith(2), Error);  // only the recorded step's flags
    cache.Append(0, at::zeros({2, 1, 1, 4}), at::zeros({2, 1, 1, 4}));
    EXPECT_THROW(cache.Commit(2), Error);
    cache.Commit(1);
    EXPECT_EQ(cache.length(), all.size(1));
  }
  EXPECT_GT(cache.capacity(), 64);
  EXPECT_TRUE(at::equal(cache.key_valid(), all));
}

}  // namespace
}  // namespace gritserve
