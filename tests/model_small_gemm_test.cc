// small_gemm: the prefetching product for a few dozen rows, on weights laid out
// as oneDNN's BA16a64b (64-column panels of [kpad][64], zero-padded), checked
// against a float64 product across row, column and depth tails.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "gritserve/model/small_gemm.h"

namespace gritserve {
namespace {

// w: [K, N] -> [ceil(N/64), kpad, 64] contiguous, zero-padded.
at::Tensor PackBa16a64b(const at::Tensor& w) {
  const int64_t k = w.size(0), n = w.size(1);
  const int64_t kpad = (k + 15) / 16 * 16, npad = (n + 63) / 64 * 64;
  at::Tensor padded = at::zeros({kpad, npad});
  padded.narrow(0, 0, k).narrow(1, 0, n).copy_(w);
  return padded.view({kpad, npad / 64, 64}).permute({1, 0, 2}).contiguous();
}

TEST(SmallGemm, MatchesFloat64ProductAcrossTails) {
  if (!small_gemm::Available()) {
    // Not an AVX-512 machine: the kernel must say so and refuse, never compute.
    EXPECT_ANY_THROW(small_gemm::Run(nullptr, 1, 1, nullptr, 1, nullptr, nullptr));
    return;
  }
  struct Shape {
    int64_t k, n;
  };
  for (const Shape s : {Shape{896, 1152}, Shape{130, 200}, Shape{17, 64}, Shape{300, 5}}) {
    at::manual_seed(s.k * 7 + s.n);
    const at::Tensor w = at::randn({s.k, s.n}) * 0.1;  // [K, N]
    const at::Tensor packed = PackBa16a64b(w);
    const at::Tensor bias = at::randn({s.n});
    for (int64_t m : {1, 5, 6, 7, 24, 32, 41, 64}) {
      const at::Tensor a = at::randn({m, s.k});
      for (bool with_bias : {false, true}) {
        at::Tensor c = at::full({m, s.n}, 123.0f);  // [M, N]: every element must be written
        small_gemm::Run(a.data_ptr<float>(), m, s.k, packed.data_ptr<float>(), s.n,
                        with_bias ? bias.data_ptr<float>() : nullptr, c.data_ptr<float>());
        at::Tensor ref = at::matmul(a.to(at::kDouble), w.to(at::kDouble));
        if (with_bias) ref = ref + bias.to(at::kDouble);
        EXPECT_LT((c.to(at::kDouble) - ref).abs().max().item<double>(), 1e-4)
            << "k " << s.k << " n " << s.n << " rows " << m << " bias " << with_bias;
      }
    }
  }
}

TEST(SmallGemm, TakesOnlyTheRowCountsItWinsAt) {
  EXPECT_FALSE(small_gemm::Suits(1));
  EXPECT_FALSE(small_gemm::Suits(8));
  EXPECT_TRUE(small_gemm::Suits(32));
  EXPECT_TRUE(small_gemm::Suits(64));
  EXPECT_FALSE(small_gemm::Suits(65));
  if (small_gemm::Available()) {
    EXPECT_ANY_THROW(small_gemm::Run(nullptr, 65, 1, nullptr, 1, nullptr, nullptr));
  }
}

}  // namespace
}  // namespace gritserve
