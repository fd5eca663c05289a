// Long inputs through the decoder: attention in blocks of query rows (with
// the mask built per block from key intervals) and the MLP in row chunks
// give what short passes give, for causal, padded bidirectional and
// document-block layouts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "gritserve/cache/kv_cache.h"
#include "gritserve/model/decoder.h"
#include "test_util.h"

namespace gritserve {
namespace {

// Long enough that the tiny model's scores ([4 heads, T, T] floats) exceed a
// block's budget and its MLP runs in chunks.
constexpr int64_t kLong = 2600;

class LongInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(2);
    const std::string dir = testing::FixturesDir() + "/qwen2-tiny";
    config_ = new ModelConfig(ModelConfig::FromDirectory(dir));
    decoder_ = new Decoder(*config_, LoadWeights(dir, *config_, at::kFloat, at::kCPU));
  }
  static void TearDownTestSuite() {
    delete decoder_;
    delete config_;
  }
  // ids [B, T] at positions start.. -> [B, T, H]
  static at::Tensor Run(const at::Tensor& ids, int64_t start, AttentionSpec spec,
                        const at::Tensor& valid = {}) {
    ForwardInput in;
    in.ids = ids;
    in.positions = at::arange(start, start + ids.size(1), at::kLong).repeat({ids.size(0), 1});
    in.valid = valid;
    in.attention = std::move(spec);
    return decoder_->Forward(in, nullptr);
  }
  static double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>();
  }

  c10::InferenceMode guard_;
  static ModelConfig* config_;
  static Decoder* decoder_;
};
ModelConfig* LongInputTest::config_ = nullptr;
Decoder* LongInputTest::decoder_ = nullptr;

TEST_F(LongInputTest, BlocksRunForThisLength) {
  const kernels::AttentionBackend defaults;
  EXPECT_LT(defaults.QueryBlock(1, config_->num_attention_heads, kLong, kLong, false), kLong);
}

// One pass over T tokens, filling a cache, against passes of `chunk` tokens
// through another cache; then one decode step on each cache.
void ExpectCausalPassEqualsChunkedPrefill(const Decoder& decoder, int64_t t, int64_t chunk) {
  at::manual_seed(t);
  const at::Tensor ids = at::randint(0, 150000, {1, t + 1}, at::kLong);  // [1, T + 1]
  auto input = [&](int64_t start, int64_t n) {
    ForwardInput in;
    in.ids = ids.narrow(1, start, n);
    in.positions = at::arange(start, start + n, at::kLong).view({1, n});
    in.attention = AttentionSpec::Causal();
    return in;
  };
  KvCache one = decoder.NewCache(1), chunked = decoder.NewCache(1);
  const at::Tensor whole = decoder.Forward(input(0, t), &one)[0];  // [T, H]
  std::vector<at::Tensor> parts;                                   // [chunk, H] each
  for (int64_t start = 0; start < t; start += chunk) {
    parts.push_back(
        decoder.Forward(input(start, std::min<int64_t>(chunk, t - start)), &chunked)[0]);
  }
  EXPECT_LT((whole - at::cat(parts, 0)).abs().max().item<double>(), 2e-4) << t;
  const at::Tensor next_one = decoder.Forward(input(t, 1), &one);
  const at::Tensor next_chunked = decoder.Forward(input(t, 1), &chunked);
  EXPECT_LT((next_one - next_chunked).abs().max().item<double>(), 2e-4) << t;
}

TEST_F(LongInputTest, CausalPassEqualsChunkedPrefillThroughTheCache) {
  ExpectCausalPassEqualsChunkedPrefill(*decoder_, kLong, 256);
}

TEST_F(LongInputTest, LayersInRowChunksEqualTheWholePass) {
  // Past 8192 tokens a single sequence runs each layer in row chunks; a batch
  // of two copies of it does not.
  const int64_t t = 8300;
  ExpectCausalPassEqualsChunkedPrefill(*decoder_, t, 4150);
  at::manual_seed(4);
  const at::Tensor ids = at::randint(0, 150000, {1, t}, at::kLong);                    // [1, T]
  const at::Tensor single = Run(ids, 0, AttentionSpec::Bidirectional())[0];            // [T, H]
  const at::Tensor pair = Run(ids.repeat({2, 1}), 0, AttentionSpec::Bidirectional());  // [2, T, H]
  EXPECT_LT(MaxDiff(single, pair[1]), 2e-4);
  ForwardInput in;
  in.ids = ids;
  in.positions = at::arange(t, at::kLong).view({1, t});
  in.attention = AttentionSpec::Bidirectional();
  in.last_position_only = true;
  EXPECT_LT(MaxDiff(decoder_->Forward(in, nullptr)[0][0], single[t - 1]), 2e-4);
}

TEST_F(LongInputTest, PaddedBidirectionalBatchEqualsEachRowAlone) {
  at::manual_seed(2);
  const int64_t short_len = 1900;
  const at::Tensor ids = at::randint(0, 150000, {2, kLong}, at::kLong);  // [2, T]
  at::Tensor valid = at::ones({2, kLong}, at::kBool);
  valid[1].narrow(0, short_len, kLong - short_len).fill_(false);
  const at::Tensor batch = Run(ids, 0, AttentionSpec::Bidirectional(), valid);  // [2, T, H]
  const at::Tensor row0 = Run(ids.narrow(0, 0, 1), 0, AttentionSpec::Bidirectional())[0];
  const at::Tensor row1 =
      Run(ids.narrow(0, 1, 1).narrow(1, 0, short_len), 0, AttentionSpec::Bidirectional())[0];
  EXPECT_LT(MaxDiff(batch[0], row0), 2e-4);
  EXPECT_LT(MaxDiff(batch[1].narrow(0, 0, short_len), row1), 2e-4);
}

TEST_F(LongInputTest, DocumentBlocksEqualEachDocumentAlone) {
  at::manual_seed(3);
  const int64_t doc = kLong / 2;
  const at::Tensor ids = at::randint(0, 150000, {1, kLong}, at::kLong);  // [1, T]
  const at::Tensor blocks =
      Run(ids, 0, AttentionSpec::Blocks({{doc, true, false}, {kLong - doc, true, false}}))[0];
  const at::Tensor first = Run(ids.narrow(1, 0, doc), 0, AttentionSpec::Bidirectional())[0];
  const at::Tensor second =
      Run(ids.narrow(1, doc, kLong - doc), doc, AttentionSpec::Bidirectional())[0];
  EXPECT_LT(MaxDiff(blocks.narrow(0, 0, doc), first), 2e-4);
  EXPECT_LT(MaxDiff(blocks.narrow(0, doc, kLong - doc), second), 2e-4);
  // A causal prompt after a document, seeing it: what the document's cached
  // keys and values followed by a causal prefill give.
  const at::Tensor prompt_after =
      Run(ids, 0, AttentionSpec::Blocks({{doc, true, false}, {kLong - doc, false, true}}))[0];
  KvCache cache = decoder_->NewCache(1);
  ForwardInput in;
  in.ids = ids.narrow(1, 0, doc);
  in.positions = at::arange(doc, at::kLong).view({1, doc});
  in.attention = AttentionSpec::Bidirectional();
  decoder_->Forward(in, &cache);
  in.ids = ids.narrow(1, doc, kLong - doc);
  in.positions = at::arange(doc, kLong, at::kLong).view({1, kLong - doc});
  in.attention = AttentionSpec::Causal();
  const at::Tensor prefill = decoder_->Forward(in, &cache)[0];  // [T - doc, H]
  EXPECT_LT(MaxDiff(prompt_after.narrow(0, doc, kLong - doc), prefill), 2e-4);
}

}  // namespace
}  // namespace gritserve
