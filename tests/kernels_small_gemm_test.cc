// small_gemm: the prefetching product for a few dozen rows, on weights laid out
// as oneDNN's BA16a64b (64-column panels of [kpad][64], zero-padded), and the
// bfloat16-panel product for any row count, checked against a float64 product
// across row, column and depth tails.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gritserve/kernels/small_gemm.h"

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

// Values that are bfloat16 numbers, as a bfloat16 checkpoint loaded in float32.
at::Tensor Bf16Valued(at::IntArrayRef shape) {
  return (at::randn(shape) * 0.1).to(at::kBFloat16).to(at::kFloat);
}

// Every panel ISA this CPU has (AVX-512 and the AVX2 sibling on an AVX-512
// machine); one it lacks must refuse, never compute.
TEST(SmallGemm, Bfloat16PanelsMatchFloat64ProductForAnyRowCountOnEveryIsa) {
  std::string covered;
  for (const kernels::Isa isa : {kernels::Isa::kAvx512, kernels::Isa::kAvx2}) {
    if (!small_gemm::PanelIsaAvailable(isa)) {
      EXPECT_ANY_THROW(small_gemm::RunBf16(nullptr, 1, 1, nullptr, 1, nullptr, nullptr, isa));
      continue;
    }
    covered += std::string(covered.empty() ? "" : ", ") + kernels::IsaName(isa);
    struct Shape {
      int64_t k, n;
    };
    // Depths below, at and across the 128 and 256 blocks; columns ending
    // mid-vector, mid-half and mid-panel.
    for (const Shape s :
         {Shape{896, 1152}, Shape{300, 200}, Shape{17, 64}, Shape{1, 5}, Shape{513, 33}}) {
      at::manual_seed(s.k * 11 + s.n);
      const at::Tensor w = Bf16Valued({s.n, s.k});  // [N, K]: HF's [out, in]
      const at::Tensor bias = at::randn({s.n});
      for (bool out_in : {true, false}) {
        const at::Tensor src = out_in ? w : w.t().contiguous();
        at::Tensor packed = at::full({small_gemm::Bf16PanelElements(s.k, s.n)}, 7, at::kShort);
        small_gemm::PackBf16(src.data_ptr<float>(), out_in, s.k, s.n,
                             reinterpret_cast<uint16_t*>(packed.data_ptr<int16_t>()));
        // Packing the bfloat16 bits themselves gives the same panels.
        const at::Tensor src_bf16 = src.to(at::kBFloat16);
        at::Tensor packed2 = at::zeros_like(packed);
        small_gemm::PackBf16(reinterpret_cast<const uint16_t*>(src_bf16.data_ptr()), out_in, s.k,
                             s.n, reinterpret_cast<uint16_t*>(packed2.data_ptr<int16_t>()));
        EXPECT_TRUE(at::equal(packed, packed2));
        for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 32, 64, 65, 97, 200}) {
          const at::Tensor a = at::randn({m, s.k});
          for (bool with_bias : {false, true}) {
            at::Tensor c = at::full({m, s.n}, 123.0f);  // [M, N]: every element must be written
            small_gemm::RunBf16(a.data_ptr<float>(), m, s.k,
                                reinterpret_cast<const uint16_t*>(packed.data_ptr<int16_t>()), s.n,
                                with_bias ? bias.data_ptr<float>() : nullptr, c.data_ptr<float>(),
                                isa);
            at::Tensor ref = at::matmul(a.to(at::kDouble), w.to(at::kDouble).t());
            if (with_bias) ref = ref + bias.to(at::kDouble);
            EXPECT_LT((c.to(at::kDouble) - ref).abs().max().item<double>(), 1e-4)
                << kernels::IsaName(isa) << " k " << s.k << " n " << s.n << " rows " << m
                << " bias " << with_bias << " out_in " << out_in;
          }
        }
      }
    }
  }
  std::printf("bfloat16 panel kernels covered: %s\n", covered.empty() ? "none" : covered.c_str());
  ::testing::Test::RecordProperty("covered", covered);
}

TEST(SmallGemm, PanelIsaFollowsTheCpuAndTheAvx2Switch) {
  const kernels::Isa widest = small_gemm::Bf16PanelIsa();
  if (small_gemm::PanelIsaAvailable(kernels::Isa::kAvx512)) {
    EXPECT_EQ(widest, kernels::Isa::kAvx512);
    ASSERT_EQ(::setenv("GRITSERVE_CPU_ISA", "avx2", 1), 0);
    EXPECT_EQ(small_gemm::Bf16PanelIsa(), kernels::Isa::kAvx2);
    ASSERT_EQ(::unsetenv("GRITSERVE_CPU_ISA"), 0);
  } else if (small_gemm::PanelIsaAvailable(kernels::Isa::kAvx2)) {
    EXPECT_EQ(widest, kernels::Isa::kAvx2);
  } else {
    EXPECT_EQ(widest, kernels::Isa::kBaseline);
  }
}

TEST(SmallGemm, Bfloat16PanelsInterleaveColumnsAndZeroPad) {
  // One row of 40 columns, column j = j + 1: in each 32-column half, lane i
  // holds columns i and i + 16; columns past 40 are zero.
  const int64_t n = 40;
  at::Tensor w = at::arange(1, n + 1, at::kFloat).view({n, 1});  // [out, in] with in = 1
  std::vector<uint16_t> packed(static_cast<size_t>(small_gemm::Bf16PanelElements(1, n)), 9);
  ASSERT_EQ(packed.size(), 64u);
  small_gemm::PackBf16(w.data_ptr<float>(), /*out_in=*/true, 1, n, packed.data());
  auto value = [&](size_t i) {
    at::Tensor t = at::tensor({static_cast<int16_t>(packed[i])}, at::kShort);
    return t.view(at::kBFloat16).item<float>();
  };
  for (int64_t j = 0; j < 64; ++j) {
    const int64_t h = j / 32, c = j % 32;
    const size_t slot = static_cast<size_t>(32 * h + 2 * (c % 16) + c / 16);
    EXPECT_EQ(value(slot), j < n ? static_cast<float>(j + 1) : 0.0f) << "column " << j;
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
