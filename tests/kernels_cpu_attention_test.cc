// cpu_attention: the fused grouped-query attention pass against a float64
// softmax(q k^T + mask) v, over key counts that do and do not fill its 64-key
// panels and 256-key softmax chunks, strided K/V views, several batches and
// query-head groups, and masks that hide whole chunks or whole rows; on every
// ISA path this CPU runs (AVX-512 and AVX2, each forced with a ScopedIsa).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attention_reference.h"
#include "gritserve/kernels/cpu_attention.h"
#include "gritserve/kernels/dispatch.h"
#include "isa_param.h"

namespace gritserve {
namespace {

constexpr float kMasked = -1e30f;  // what the decoder's masks hold

using testing::MaxDiff;
constexpr auto& Reference = testing::AttentionReference;
using kernels::Isa;

// Each test runs once per ISA the CPU has; baseline (no vector path) checks
// that the kernel refuses, so the decoder keeps its other path.
class CpuAttention : public testing::IsaTest {};
GRITSERVE_INSTANTIATE_ISA_TESTS(CpuAttention);

TEST_P(CpuAttention, IsAvailableExactlyOnTheVectorPaths) {
  EXPECT_EQ(cpu_attention::Available(), GetParam() != Isa::kBaseline);
}

struct Shape {
  int64_t b, hkv, g, t, s, d;
};

// Causal over the last T of S keys (a prompt after a cache) and, in batch 1,
// the first `hidden` keys masked for every row: whole 256-key chunks are seen
// before any allowed key, which the online softmax must discard.
at::Tensor Mask(const Shape& sh, int64_t hidden) {
  at::Tensor mask = at::zeros({sh.b, sh.t, sh.s});  // [B, T, S]
  for (int64_t ti = 0; ti < sh.t; ++ti) {
    const int64_t visible = sh.s - sh.t + ti + 1;
    if (visible < sh.s) mask.narrow(1, ti, 1).narrow(2, visible, sh.s - visible).fill_(kMasked);
  }
  if (sh.b > 1) mask[1].narrow(1, 0, std::min(hidden, sh.s - sh.t)).fill_(kMasked);
  return mask;
}

TEST_P(CpuAttention, MatchesFloat64AttentionAcrossShapes) {
  if (!cpu_attention::Available()) {
    // No vector path: Suits must refuse so the decoder keeps its other path.
    at::Tensor q = at::randn({1, 1, 4, 64}), kv = at::randn({1, 1, 8, 64});
    EXPECT_FALSE(cpu_attention::Suits(q, kv, kv, at::zeros({1, 4, 8}), 1));
    return;
  }
  for (const Shape sh :
       {Shape{1, 2, 7, 32, 1312, 64}, Shape{2, 2, 7, 5, 65, 64}, Shape{2, 1, 1, 40, 40, 128},
        Shape{1, 3, 2, 9, 300, 64}, Shape{2, 2, 4, 17, 600, 128}, Shape{1, 1, 16, 1, 1, 64},
        Shape{1, 2, 3, 11, 64, 256}}) {
    at::manual_seed(sh.s * 31 + sh.t);
    const at::Tensor q = at::randn({sh.b, sh.hkv, sh.g * sh.t, sh.d}) * 0.3;
    // K and V as views into wider storage, the way the decoder passes them:
    // a KV cache's [B, Hkv, capacity, D] and the fused projection's columns.
    const at::Tensor cache = at::randn({sh.b, sh.hkv, sh.s + 5, sh.d});
    const at::Tensor k = cache.narrow(2, 0, sh.s);
    const at::Tensor fused = at::randn({sh.b, sh.s, sh.hkv * sh.d * 2 + 16});
    const at::Tensor v =
        fused.narrow(2, 16, sh.hkv * sh.d).view({sh.b, sh.s, sh.hkv, sh.d}).transpose(1, 2);
    const at::Tensor mask = Mask(sh, /*hidden=*/520);
    ASSERT_TRUE(cpu_attention::Suits(q, k, v, mask, sh.g));
    const at::Tensor out = cpu_attention::Attend(q, k, v, mask, sh.g);
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{sh.b * sh.t, sh.hkv * sh.g * sh.d}));
    EXPECT_LT(MaxDiff(out, Reference(q, k, v, mask, sh.g)), 2e-5)
        << "b=" << sh.b << " hkv=" << sh.hkv << " g=" << sh.g << " t=" << sh.t << " s=" << sh.s
        << " d=" << sh.d;
  }
}

TEST_P(CpuAttention, FullyMaskedRowsAverageAllValuesAsTheSoftmaxDoes) {
  // A padded query row sees no key: the decoder's masks make that a uniform
  // softmax (finite mask value), never NaN.
  const at::Tensor q = at::randn({1, 1, 2 * 3, 64});
  const at::Tensor kv = at::randn({1, 1, 700, 64});
  at::Tensor mask = at::zeros({1, 3, 700});
  mask[0][1].fill_(kMasked);
  if (!cpu_attention::Available()) {
    EXPECT_FALSE(cpu_attention::Suits(q, kv, kv, mask, 2));
    return;
  }
  const at::Tensor out = cpu_attention::Attend(q, kv, kv, mask, 2);  // [3, 128]
  EXPECT_FALSE(at::isnan(out).any().item<bool>());
  EXPECT_LT(MaxDiff(out, Reference(q, kv, kv, mask, 2)), 2e-5);
  const at::Tensor mean = kv[0][0].mean(0);  // [64]
  EXPECT_LT(MaxDiff(out[1].narrow(0, 0, 64), mean), 1e-5);
  EXPECT_LT(MaxDiff(out[1].narrow(0, 64, 64), mean), 1e-5);
}

TEST_P(CpuAttention, RefusesOperandsItCannotRead) {
  const at::Tensor q = at::randn({1, 2, 8, 64}), kv = at::randn({1, 2, 10, 64});
  const at::Tensor mask = at::zeros({1, 4, 10});
  EXPECT_EQ(cpu_attention::Suits(q, kv, kv, mask, 2), cpu_attention::Available());
  const at::Tensor q16 = at::randn({1, 2, 8, 16}), kv16 = at::randn({1, 2, 10, 16});
  EXPECT_FALSE(cpu_attention::Suits(q16, kv16, kv16, mask, 2));  // D not a multiple of 64
  EXPECT_FALSE(cpu_attention::Suits(q.transpose(2, 3).contiguous().transpose(2, 3), kv, kv, mask,
                                    2));  // q not contiguous
  EXPECT_FALSE(cpu_attention::Suits(q, kv.transpose(2, 3).contiguous().transpose(2, 3), kv, mask,
                                    2));                                     // k strided along D
  EXPECT_FALSE(cpu_attention::Suits(q.to(at::kBFloat16), kv, kv, mask, 2));  // not float32
  EXPECT_FALSE(cpu_attention::Suits(q, kv, kv, at::zeros({1, 8, 10}), 2));   // mask rows
  EXPECT_FALSE(cpu_attention::Suits(q, kv, kv, mask, 3));                    // 8 rows, G = 3
  EXPECT_FALSE(cpu_attention::Suits(q, kv, kv.narrow(2, 0, 9), mask, 2));    // K, V differ
  EXPECT_ANY_THROW(cpu_attention::Attend(q16, kv16, kv16, mask, 2));
}

}  // namespace
}  // namespace gritserve
