// The fused CPU kernels against the ATen formulations they replace, on shapes
// with vector tails (odd widths), padding rows, extreme scores and strided
// destinations; each test on every compiled copy of the loops this CPU runs
// (the suffix of its name says which: baseline, avx2, avx512).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <iostream>
#include <vector>

#include "gritserve/kernels/cpu_kernels.h"
#include "gritserve/kernels/dispatch.h"
#include "isa_param.h"

namespace gritserve {
namespace {

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// HF's rotate_half formulation. x: [..., D]; cos, sin: broadcastable to [..., D/2]
at::Tensor RopeReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor c = at::cat({cos, cos}, -1), s = at::cat({sin, sin}, -1);
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * c + rotated * s;
}

using kernels::Isa;

using testing::IsasThisCpuRuns;

class CpuKernels : public testing::IsaTest {};
GRITSERVE_INSTANTIATE_ISA_TESTS(CpuKernels);

TEST(CpuKernelsIsa, ScopedIsaSelectsAndRestores) {
  const Isa before = kernels::ActiveIsa();
  EXPECT_EQ(before, kernels::Dispatch::Current().isa);
  {
    kernels::ScopedIsa scoped(Isa::kBaseline);
    EXPECT_EQ(kernels::ActiveIsa(), Isa::kBaseline);
  }
  EXPECT_EQ(kernels::ActiveIsa(), before);
  std::cout << "CPU kernel copies run by this suite:";
  for (Isa isa : IsasThisCpuRuns()) std::cout << " " << kernels::IsaName(isa);
  std::cout << "\n";
}

// at::parallel_for runs serially in any file built without OpenMP; the
// kernels' file must not be one (it silently was once, halving their speed).
TEST(CpuKernelsThreads, SplitRowsOverLibTorchsThreads) {
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  EXPECT_EQ(cpu_kernels::Threads(), 2);
  at::set_num_threads(1);
  EXPECT_EQ(cpu_kernels::Threads(), 1);
  at::set_num_threads(before);
}

TEST_P(CpuKernels, AddRmsNormAddsInPlaceAndNormalizes) {
  at::manual_seed(1);
  for (int64_t h : {1, 7, 67, 896}) {
    at::Tensor x = at::randn({5, h}) * 3, delta = at::randn({5, h}), w = at::randn({h});
    const float eps = 1e-6f;
    at::Tensor sum = x + delta;
    at::Tensor expected = (sum * at::rsqrt(sum.pow(2).mean(-1, true) + eps)) * w;
    at::Tensor y = cpu_kernels::AddRmsNorm(x, delta, w, eps);
    EXPECT_LT(MaxDiff(x, sum), 1e-6) << "x must hold the residual sum, H " << h;
    EXPECT_LT(MaxDiff(y, expected), 1e-5) << "H " << h;
    // Without a delta, x is left as it is.
    at::Tensor before = x.clone();
    at::Tensor y2 = cpu_kernels::AddRmsNorm(x, at::Tensor(), w, eps);
    EXPECT_TRUE(at::equal(x, before));
    EXPECT_LT(MaxDiff(y2, expected), 1e-5);
  }
}

TEST_P(CpuKernels, RopeQkRotatesKeysInPlaceAndReturnsScaledQueriesPerHead) {
  at::manual_seed(2);
  const int64_t b = 2, t = 5, hq = 4, hkv = 2, d = 10;  // D/2 = 5: a vector tail
  at::Tensor qkv = at::randn({b * t, (hq + 2 * hkv) * d});
  at::Tensor pos = at::randint(0, 5000, {b * t}).to(at::kFloat);  // [B*T]
  at::Tensor inv = at::pow(10000.0, -at::arange(0, d, 2).to(at::kFloat) / d);
  at::Tensor freqs = pos.unsqueeze(1) * inv;  // [B*T, D/2]
  at::Tensor cos = freqs.cos(), sin = freqs.sin();
  at::Tensor c4 = cos.view({b, 1, t, d / 2}), s4 = sin.view({b, 1, t, d / 2});
  at::Tensor q_ref =
      RopeReference(qkv.narrow(1, 0, hq * d).view({b, t, hq, d}).transpose(1, 2), c4, s4) * 0.25;
  at::Tensor k_ref =
      RopeReference(qkv.narrow(1, hq * d, hkv * d).view({b, t, hkv, d}).transpose(1, 2), c4, s4);
  at::Tensor v_before = qkv.narrow(1, (hq + hkv) * d, hkv * d).clone();

  at::Tensor q = cpu_kernels::RopeQk(qkv, cos, sin, b, hq, hkv, d, 0.25f);
  ASSERT_EQ(q.sizes(), (at::IntArrayRef{b, hq, t, d}));
  ASSERT_TRUE(q.is_contiguous());
  EXPECT_LT(MaxDiff(q, q_ref), 1e-5);
  at::Tensor k = qkv.narrow(1, hq * d, hkv * d).view({b, t, hkv, d}).transpose(1, 2);
  EXPECT_LT(MaxDiff(k, k_ref), 1e-5);
  EXPECT_TRUE(at::equal(qkv.narrow(1, (hq + hkv) * d, hkv * d), v_before));
}

TEST_P(CpuKernels, SiluMulMatchesAtenIncludingSaturatedInputs) {
  at::manual_seed(3);
  for (int64_t inter : {1, 13, 4864}) {
    at::Tensor gu = at::randn({3, 2 * inter}) * 4;
    gu[0].narrow(0, 0, (inter + 1) / 2).fill_(-200.0);  // e^200 overflows float
    gu[1].narrow(0, 0, (inter + 1) / 2).fill_(95.0);
    at::Tensor expected = at::silu(gu.narrow(1, 0, inter)) * gu.narrow(1, inter, inter);
    at::Tensor h = cpu_kernels::SiluMul(gu);
    ASSERT_EQ(h.sizes(), (at::IntArrayRef{3, inter}));
    EXPECT_TRUE(at::isfinite(h).all().item<bool>());
    EXPECT_LT(MaxDiff(h, expected), 1e-4 * expected.abs().max().item<double>() + 1e-6)
        << "I " << inter;
  }
}

TEST_P(CpuKernels, MaskedSoftmaxMatchesAtenOverTheWholeExponentRange) {
  at::manual_seed(4);
  const int64_t b = 2, heads = 3, t = 4, s = 37;
  at::Tensor scores = at::randn({b, heads, t, s}) * 30;  // differences far beyond e^±87
  at::Tensor mask = at::zeros({b, t, s});
  mask[0][1].narrow(0, 20, s - 20).fill_(-1e30);  // causal-style tail
  mask[1][2].fill_(-1e30);                        // a fully masked (padding) row
  at::Tensor expected = at::softmax(scores + mask.unsqueeze(1), -1);
  at::Tensor got = scores.clone();
  cpu_kernels::MaskedSoftmax(got, mask);
  EXPECT_LT(MaxDiff(got, expected), 1e-6);
  // Rows sum to one, masked entries are exactly zero, the padding row is uniform.
  EXPECT_LT(MaxDiff(got.sum(-1), at::ones({b, heads, t})), 1e-5);
  EXPECT_EQ(got[0][2][1].narrow(0, 20, s - 20).abs().max().item<float>(), 0.0f);
  EXPECT_LT(MaxDiff(got[1][0][2], at::full({s}, 1.0 / s)), 1e-7);
  // Against float64, no worse than LibTorch's float32 softmax (both inherit the
  // rounding of x - max, a few 1e-6 relative for differences of ~60).
  at::Tensor mild = at::randn({1, 1, 1, 1000}) * 10;
  at::Tensor soft = mild.clone();
  cpu_kernels::MaskedSoftmax(soft, at::zeros({1, 1, 1000}));
  at::Tensor ref = at::softmax(mild.to(at::kDouble), -1);
  auto rel = [&](const at::Tensor& p) {
    return ((p.to(at::kDouble) - ref).abs() / ref).max().item<double>();
  };
  EXPECT_LT(rel(soft), 2 * rel(at::softmax(mild, -1)) + 1e-7);
}

// A decode step's attention in one pass per KV head equals the float64
// softmax(q k^T + mask) v over strided cache views, for odd key counts and
// head sizes, masked (padding) keys and a fully masked row.
TEST_P(CpuKernels, DecodeAttentionMatchesFloat64OverStridedCacheViews) {
  at::manual_seed(6);
  for (const auto& [g, s, d] :
       std::vector<std::array<int64_t, 3>>{{7, 1, 64}, {7, 49, 64}, {4, 300, 128}, {3, 37, 20}}) {
    const int64_t b = 2, hkv = 2, capacity = s + 5;
    const at::Tensor q = at::randn({b, hkv, g, d}) / std::sqrt(static_cast<double>(d));
    const at::Tensor k = at::randn({b, hkv, capacity, d}).narrow(2, 0, s);  // cache views
    const at::Tensor v = at::randn({b, hkv, capacity, d}).narrow(2, 0, s);
    at::Tensor mask = at::zeros({b, 1, s});
    if (s > 3) mask[0][0].narrow(0, 1, 2).fill_(-1e30);  // padding inside the sequence
    mask[1][0].fill_(-1e30);                             // a fully masked row: uniform
    const at::Tensor got = cpu_kernels::DecodeAttention(q, k, v, mask);  // [B, Hkv G D]
    const at::Tensor scores = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(2, 3));
    const at::Tensor probs = at::softmax(scores + mask.to(at::kDouble).unsqueeze(1), -1);
    const at::Tensor expected = at::matmul(probs, v.to(at::kDouble)).reshape({b, hkv * g * d});
    EXPECT_LT(MaxDiff(got.to(at::kDouble), expected), 1e-5)
        << "g " << g << " s " << s << " d " << d;
  }
  const at::Tensor q = at::randn({1, 2, 7, 64});
  EXPECT_THROW(
      cpu_kernels::DecodeAttention(q, at::randn({1, 2, 9, 64}).transpose(2, 3).contiguous(),
                                   at::randn({1, 2, 9, 64}), at::zeros({1, 1, 9})),
      std::exception);
}

TEST_P(CpuKernels, PlaceKvRotatesKeysAndCopiesValuesIntoStridedSlots) {
  at::manual_seed(5);
  const int64_t layers = 3, h = 2, t = 7, d = 6, capacity = 16, at_token = 5;
  const float delta = 300;
  at::Tensor inv = at::pow(10000.0, -at::arange(0, d, 2).to(at::kFloat) / d);
  at::Tensor cos = (inv * delta).cos(), sin = (inv * delta).sin();
  std::vector<at::Tensor> k_src, v_src, k_buf, v_buf, k_dst, v_dst;
  for (int64_t l = 0; l < layers; ++l) {
    k_src.push_back(at::randn({h, t, d}));
    v_src.push_back(at::randn({h, t, d}));
    k_buf.push_back(at::full({h, capacity, d}, 7.0));  // a cache layer: [H, C, D]
    v_buf.push_back(at::full({h, capacity, d}, 7.0));
    k_dst.push_back(k_buf[l].narrow(1, at_token, t));
    v_dst.push_back(v_buf[l].narrow(1, at_token, t));
  }
  cpu_kernels::PlaceKv(k_dst, k_src, v_dst, v_src, cos, sin);
  for (int64_t l = 0; l < layers; ++l) {
    EXPECT_LT(MaxDiff(k_dst[l], RopeReference(k_src[l], cos, sin)), 1e-5) << "layer " << l;
    EXPECT_TRUE(at::equal(v_dst[l], v_src[l]));
    // Nothing outside the slots is touched.
    EXPECT_TRUE(at::equal(k_buf[l].narrow(1, 0, at_token), at::full({h, at_token, d}, 7.0)));
    const int64_t after = capacity - at_token - t;
    EXPECT_TRUE(at::equal(v_buf[l].narrow(1, at_token + t, after), at::full({h, after, d}, 7.0)));
  }
  // Angle zero is an exact copy.
  std::vector<at::Tensor> k_copy = {at::empty({h, t, d})}, v_copy = {at::empty({h, t, d})};
  cpu_kernels::PlaceKv(k_copy, {k_src[0]}, v_copy, {v_src[0]}, at::ones({d / 2}),
                       at::zeros({d / 2}));
  EXPECT_TRUE(at::equal(k_copy[0], k_src[0]));
}

TEST_P(CpuKernels, GemvMatchesFloat64Product) {
  at::manual_seed(6);
  for (auto [out, in] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 33}, {4099, 896}}) {
    at::Tensor w = at::randn({out, in}), x = at::randn({in});
    at::Tensor ref = at::mv(w.to(at::kDouble), x.to(at::kDouble));
    EXPECT_LT(MaxDiff(cpu_kernels::Gemv(w, x), ref), 1e-4) << out << "x" << in;
  }
}

TEST_P(CpuKernels, Bfloat16WeightsEqualTheirFloat32ValuesInTheProduct) {
  at::manual_seed(7);
  // Odd and even depths: one row at an even depth takes the AVX-512 path that
  // splits x into even and odd elements, with a partial last vector at 30.
  for (int64_t in : {67, 30, 896}) {
    for (int64_t m : {1, 3, 4, 9}) {
      at::Tensor w16 = at::randn({1003, in}).to(at::kBFloat16);  // [O, I]
      at::Tensor x = at::randn({m, in});
      at::Tensor ref = at::matmul(x.to(at::kDouble), w16.to(at::kDouble).t());  // exact weights
      at::Tensor y = cpu_kernels::MatmulBf16Weights(x, w16);
      ASSERT_EQ(y.sizes(), (at::IntArrayRef{m, 1003}));
      EXPECT_LT(MaxDiff(y, ref), 1e-4 * std::sqrt(in / 67.0)) << "rows " << m << " depth " << in;
    }
  }
  EXPECT_THROW(cpu_kernels::MatmulBf16Weights(at::randn({2, 8}), at::randn({3, 8})),
               std::exception);  // float32 weights belong elsewhere
}

TEST_P(CpuKernels, RejectWhatTheyCannotRead) {
  at::Tensor half = at::randn({4, 8}).to(at::kHalf);
  EXPECT_FALSE(cpu_kernels::Applies(half));
  EXPECT_TRUE(cpu_kernels::Applies(at::randn({4, 8})));
  EXPECT_THROW(cpu_kernels::AddRmsNorm(half, at::Tensor(), at::ones({8}), 1e-6f), std::exception);
  EXPECT_THROW(cpu_kernels::SiluMul(at::randn({8, 4}).t()), std::exception);  // not contiguous
  EXPECT_THROW(cpu_kernels::Gemv(at::randn({3, 4}), at::randn({5})), std::exception);
}

}  // namespace
}  // namespace gritserve
