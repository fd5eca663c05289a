// quant: block-quantized weights (q8, q4) and their products on every kernel
// family this CPU runs (AVX-512 VNNI, AVX2, portable), on both paths (int8
// activation rows, float32 panels), checked against a float64 product of the
// original weights within a bound derived from the quantization itself:
//   |y - y_ref| <= sum_k |x_k| e_w(k) + sum_k |w'_k| e_x(k) + float rounding
// where e_w is half a weight step (plus what half-precision scales and
// minimums add) and e_x half an activation step (int8 rows only).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gritserve/common/error.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/kernels/quant.h"

namespace gritserve {
namespace {

using quant::Format;
using quant::Isa;
using quant::Path;

// A kernel family this CPU runs: an ISA, and for AVX2 whether its int8
// products take AVX-VNNI (the float panels ignore that switch).
struct Kernel {
  Isa isa;
  bool avx_vnni;
};

// Every one: the AVX2 family both with and without AVX-VNNI where the CPU has it.
std::vector<Kernel> AvailableKernels() {
  std::vector<Kernel> kernels;
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (!quant::IsaAvailable(isa)) continue;
    kernels.push_back({isa, false});
    if (isa == Isa::kAvx2 && kernels::CpuHasAvxVnni()) kernels.push_back({isa, true});
  }
  return kernels;
}

// Dequantized weights [N, K] and the bound on each one's error [N, K].
struct Dequantized {
  at::Tensor w, err;
};

Dequantized Dequantize(const quant::Matrix& q, bool bf16_panels) {
  const int64_t n = q.rows(), k = q.cols();
  at::Tensor w = at::empty({n, k}), err = at::empty({n, k}, at::kDouble);
  float* wp = w.data_ptr<float>();
  double* ep = err.data_ptr<double>();
  for (int64_t r = 0; r < n; ++r) {
    q.DequantizeRow(r, wp + r * k);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t b = i / quant::kBlock;
      const double d = q.Scale(r, b), m = q.Min(r, b);
      // Half a step; q4's minimum rounded to half precision may leave the
      // block's smallest value up to 2^-11 |m| below it.
      double e = 0.5 * d + (q.format() == Format::kQ4 ? std::ldexp(std::fabs(m), -10) : 0.0);
      // The float panels on AVX-512 and AVX2 multiply a bfloat16 copy of w'.
      if (bf16_panels) e += std::ldexp(std::fabs(wp[r * k + i]), -8);
      ep[r * k + i] = e;
    }
  }
  return {w, err};
}

// Half an activation step per element, for activations quantized per 32-block.  a: [M, K]
at::Tensor ActivationError(const at::Tensor& a) {
  const int64_t m = a.size(0), k = a.size(1);
  at::Tensor err = at::empty({m, k}, at::kDouble);
  for (int64_t b = 0; b * quant::kBlock < k; ++b) {
    const int64_t len = std::min<int64_t>(quant::kBlock, k - b * quant::kBlock);
    at::Tensor blk = a.narrow(1, b * quant::kBlock, len).abs().to(at::kDouble);
    at::Tensor amax = std::get<0>(blk.max(1, true));  // [M, 1]
    err.narrow(1, b * quant::kBlock, len).copy_((amax / 127.0 * 0.5).expand({m, len}));
  }
  return err;
}

void CheckProduct(const quant::Matrix& q, const at::Tensor& w_orig, const at::Tensor& a,
                  const at::Tensor& bias, Isa isa, Path path, const std::string& what) {
  const int64_t m = a.size(0), n = q.rows();
  const bool bf16 = path == Path::kFloatPanels && isa != Isa::kBaseline;
  const Dequantized dq = Dequantize(q, bf16);
  at::Tensor c = at::full({m, n}, std::numeric_limits<float>::quiet_NaN());  // all written?
  quant::Multiply(q, a.data_ptr<float>(), m, bias.defined() ? bias.data_ptr<float>() : nullptr,
                  c.data_ptr<float>(), isa, path);
  const at::Tensor ad = a.to(at::kDouble), wq = dq.w.to(at::kDouble).abs();
  at::Tensor ref = at::matmul(ad, w_orig.to(at::kDouble).t());  // [M, N]
  if (bias.defined()) ref = ref + bias.to(at::kDouble);
  at::Tensor bound = at::matmul(ad.abs(), dq.err.t()) + 1e-5 * at::matmul(ad.abs(), wq.t()) + 1e-5;
  if (path == Path::kInt8Rows) bound = bound + at::matmul(ActivationError(a), wq.t());
  const at::Tensor excess = (c.to(at::kDouble) - ref).abs() - bound;
  EXPECT_FALSE(c.isnan().any().item<bool>()) << what;
  EXPECT_LE(excess.max().item<double>(), 0.0) << what;
}

std::string Name(Format f, Kernel k, Path p) {
  return std::string(quant::FormatName(f)) + " " + kernels::IsaName(k.isa) +
         (k.avx_vnni ? "-vnni" : "") + (p == Path::kInt8Rows ? " int8 rows" : " float panels");
}

// Products split rows over LibTorch's threads; LibTorch starts with one per
// physical core, which may be one here, so the tests ask for several.
void UseSeveralThreads() { at::set_num_threads(3); }

TEST(Quant, ProductsMatchFloat64WithinTheQuantizationBoundOnEveryPath) {
  UseSeveralThreads();
  struct Shape {
    int64_t n, k;
  };
  // Odd sizes, depths not a multiple of 32 (or of a vector), a lone block, a
  // pair plus one, the 0.5B model's hidden size.
  for (const Shape s : {Shape{1, 1}, Shape{5, 31}, Shape{7, 33}, Shape{66, 64}, Shape{33, 100},
                        Shape{300, 300}, Shape{17, 896}}) {
    at::manual_seed(s.n * 131 + s.k);
    const at::Tensor w = at::randn({s.n, s.k}) * 0.05;  // [N, K]
    const at::Tensor bias = at::randn({s.n});
    for (Format f : {Format::kQ8, Format::kQ4}) {
      const quant::Matrix q = quant::Matrix::Quantize(w.data_ptr<float>(), s.n, s.k, f);
      for (int64_t m : {1, 2, 3, 4, 5, 8, 33, 300}) {
        if (m == 300 && s.n * s.k > 300 * 300) continue;
        const at::Tensor a = at::randn({m, s.k});  // [M, K]
        for (Kernel kn : AvailableKernels()) {
          const kernels::ScopedAvxVnni vnni(kn.avx_vnni);
          for (Path p : {Path::kInt8Rows, Path::kFloatPanels}) {
            CheckProduct(q, w, a, m % 2 ? bias : at::Tensor(), kn.isa, p,
                         Name(f, kn, p) + " n " + std::to_string(s.n) + " k " +
                             std::to_string(s.k) + " m " + std::to_string(m));
          }
        }
      }
    }
  }
}

// Activation rows are quantized per block with ties rounded to even (as
// std::nearbyint): with the block's largest magnitude 127 each value is its
// own code, so values halfway between integers give exactly the product of
// the even integers next to them, on every path that quantizes activations.
TEST(Quant, ActivationCodesRoundHalfwayValuesToEven) {
  at::manual_seed(9);
  const int64_t n = 8, k = 40;  // a whole block and a short one
  const at::Tensor w = at::randn({n, k}) * 0.05;
  const std::vector<float> halfway = {127, 2.5f, -2.5f, 3.5f, 0.5f, -0.5f, -1.5f, 126.5f};
  const std::vector<float> even = {127, 2, -2, 4, 0, 0, -2, 126};
  at::Tensor a_half = at::zeros({1, k}), a_even = at::zeros({1, k});
  for (int64_t b : {0, 32}) {
    for (size_t i = 0; i < halfway.size(); ++i) {
      a_half[0][b + static_cast<int64_t>(i)] = halfway[i];
      a_even[0][b + static_cast<int64_t>(i)] = even[i];
    }
  }
  for (Format f : {Format::kQ8, Format::kQ4}) {
    const quant::Matrix q = quant::Matrix::Quantize(w.data_ptr<float>(), n, k, f);
    for (Kernel kn : AvailableKernels()) {
      const kernels::ScopedAvxVnni vnni(kn.avx_vnni);
      at::Tensor c_half = at::empty({1, n}), c_even = at::empty({1, n});
      quant::Multiply(q, a_half.data_ptr<float>(), 1, nullptr, c_half.data_ptr<float>(), kn.isa,
                      Path::kInt8Rows);
      quant::Multiply(q, a_even.data_ptr<float>(), 1, nullptr, c_even.data_ptr<float>(), kn.isa,
                      Path::kInt8Rows);
      EXPECT_TRUE(at::equal(c_half, c_even)) << Name(f, kn, Path::kInt8Rows);
    }
  }
}

TEST(Quant, EdgeBlocksAndBfloat16Source) {
  UseSeveralThreads();
  // Zero rows, constant blocks (q4 scale 0), one large value among tiny ones,
  // negative-only blocks; from bfloat16 bits, as a bfloat16 checkpoint loads.
  const int64_t n = 6, k = 70;
  at::Tensor w = at::randn({n, k}) * 1e-3;
  w[0].zero_();
  w[1].fill_(0.25);
  w[2][3] = 40.0;
  w[3] = -w[3].abs() - 0.5;
  const at::Tensor wb = w.to(at::kBFloat16);
  const at::Tensor wf = wb.to(at::kFloat);
  for (Format f : {Format::kQ8, Format::kQ4}) {
    const quant::Matrix q = quant::Matrix::QuantizeBf16(
        reinterpret_cast<const uint16_t*>(wb.data_ptr<at::BFloat16>()), n, k, f);
    std::vector<float> row(k);
    q.DequantizeRow(0, row.data());
    for (float v : row) EXPECT_EQ(v, 0.0f);  // zero stays exactly zero
    q.DequantizeRow(1, row.data());
    for (float v : row) {  // q4: a constant block is its minimum, exact; q8: within half a step
      if (f == Format::kQ4) {
        EXPECT_EQ(v, 0.25f);
      } else {
        EXPECT_NEAR(v, 0.25f, 0.25 / 127 / 2);
      }
    }
    for (int64_t m : {1, 4, 9}) {
      const at::Tensor a = at::randn({m, k});
      for (Kernel kn : AvailableKernels()) {
        const kernels::ScopedAvxVnni vnni(kn.avx_vnni);
        for (Path p : {Path::kInt8Rows, Path::kFloatPanels}) {
          CheckProduct(q, wf, a, at::Tensor(), kn.isa, p,
                       Name(f, kn, p) + " edge m " + std::to_string(m));
        }
      }
    }
  }
}

TEST(Quant, RefusesWeightsItCannotRepresent) {
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 1e6f}) {
    std::vector<float> w(40, 0.5f);
    w[37] = bad;
    EXPECT_THROW(quant::Matrix::Quantize(w.data(), 1, 40, Format::kQ8), Error) << bad;
    EXPECT_THROW(quant::Matrix::Quantize(w.data(), 2, 20, Format::kQ4), Error) << bad;
  }
}

TEST(Quant, HalfPrecisionRoundTripsAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = quant::HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(quant::FloatToHalf(f), h) << h;
  }
  EXPECT_EQ(quant::FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00u);  // tie -> even
  EXPECT_EQ(quant::FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02u);
  EXPECT_EQ(quant::FloatToHalf(65520.0f), 0x7C00u);          // past the largest: infinity
  EXPECT_EQ(quant::FloatToHalf(std::ldexp(1.0f, -25)), 0u);  // half the smallest: tie -> 0
}

TEST(Quant, SizesArePackedBits) {
  std::vector<float> w(64 * 896, 0.01f);
  const quant::Matrix q8 = quant::Matrix::Quantize(w.data(), 64, 896, Format::kQ8);
  const quant::Matrix q4 = quant::Matrix::Quantize(w.data(), 64, 896, Format::kQ4);
  // 896 codes + 28 half scales = 952 bytes (8.5 bits a weight), rows aligned to 64.
  EXPECT_EQ(q8.stride(), 960);
  // 448 bytes of nibbles + 28 scales + 28 minimums = 560 (5 bits), aligned to 576.
  EXPECT_EQ(q4.stride(), 576);
}

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

TEST(Quant, DispatchFollowsTheCpuAndTheIsaSwitch) {
  const Isa best = quant::DispatchedIsa();
  EXPECT_TRUE(quant::IsaAvailable(best));
  if (quant::IsaAvailable(Isa::kAvx512)) {
    EXPECT_EQ(best, Isa::kAvx512);
  }
  ScopedEnv env("GRITSERVE_CPU_ISA", "avx2");
  EXPECT_NE(quant::DispatchedIsa(), Isa::kAvx512);
}

// The AVX2 family takes AVX-VNNI by default exactly where the CPU has it (CI
// runs with GRITSERVE_CPU_AVXVNNI unset), a test can turn it off, and only
// a CPU with it lets a test turn it on; logs and benchmarks name the copy.
TEST(Quant, AvxVnniFollowsTheCpuAndItsSwitch) {
  if (std::getenv("GRITSERVE_CPU_AVXVNNI") == nullptr) {
    EXPECT_EQ(kernels::AvxVnniActive(), kernels::CpuHasAvxVnni());
  }
  {
    const kernels::ScopedAvxVnni off(false);
    EXPECT_FALSE(kernels::AvxVnniActive());
    EXPECT_STREQ(quant::Int8RowsName(Isa::kAvx2), "avx2");
  }
  if (kernels::CpuHasAvxVnni()) {
    const kernels::ScopedAvxVnni on(true);
    EXPECT_TRUE(kernels::AvxVnniActive());
    EXPECT_STREQ(quant::Int8RowsName(Isa::kAvx2), "avx2-vnni");
    EXPECT_STREQ(quant::Int8RowsName(Isa::kAvx512), "avx512");
  } else {
    EXPECT_THROW(kernels::ScopedAvxVnni(true), Error);
  }
}

TEST(Quant, LinearLayerQuantizesAndMultipliesWithItsBias) {
  UseSeveralThreads();
  at::manual_seed(3);
  const at::Tensor w = (at::randn({40, 96}) * 0.1).to(at::kBFloat16);  // [out, in]
  const at::Tensor bias = at::randn({40});
  for (Format f : {Format::kQ8, Format::kQ4}) {
    Linear lin(w, bias, f);
    ASSERT_NE(lin.quantized(), nullptr);
    EXPECT_EQ(lin.in_features(), 96);
    EXPECT_EQ(lin.out_features(), 40);
    for (int64_t m : {0, 1, 6, 20}) {
      const at::Tensor x = at::randn({m, 96});
      const at::Tensor y = lin(x);  // [M, 40]
      ASSERT_EQ(y.sizes(), (at::IntArrayRef{m, 40}));
      if (m == 0) continue;
      at::Tensor expect = at::empty({m, 40});
      quant::Multiply(*lin.quantized(), x.data_ptr<float>(), m, bias.data_ptr<float>(),
                      expect.data_ptr<float>(), quant::DispatchedIsa());
      EXPECT_TRUE(at::equal(y, expect)) << m;
    }
  }
}

// Rows as bfloat16 for the native-bfloat16 products: each value the
// dequantized float32 one rounded to nearest even (as LibTorch rounds), on the
// AVX-512 copy and the portable one, for depths that end in a partial pair.
TEST(Quant, Bfloat16RowsAreTheDequantizedValuesRounded) {
  UseSeveralThreads();
  for (const int64_t k : {1, 31, 33, 64, 100, 896}) {
    at::manual_seed(k);
    const int64_t n = 37;
    const at::Tensor w = at::randn({n, k}) * 0.05;  // [N, K]
    for (Format f : {Format::kQ8, Format::kQ4}) {
      const quant::Matrix q = quant::Matrix::Quantize(w.data_ptr<float>(), n, k, f);
      at::Tensor want = at::empty({n - 1, k});  // rows 1.. in float32
      for (int64_t r = 1; r < n; ++r) q.DequantizeRow(r, want.data_ptr<float>() + (r - 1) * k);
      want = want.to(at::kBFloat16);
      for (Isa isa : {Isa::kAvx512, Isa::kBaseline}) {
        if (!quant::IsaAvailable(isa)) continue;
        at::Tensor got = at::empty({n - 1, k}, at::kBFloat16);
        quant::DequantizeBf16Rows(q, 1, n - 1, static_cast<uint16_t*>(got.data_ptr()), isa);
        EXPECT_TRUE(at::equal(got, want))
            << Name(f, {isa, false}, Path::kFloatPanels) << " k " << k;
      }
      EXPECT_ANY_THROW(quant::DequantizeBf16Rows(q, 1, n, nullptr, Isa::kBaseline));
    }
  }
}

// A quantized layer built for bfloat16 products: few rows keep the int8
// kernels exactly; prompt-sized ones, where the CPU has native bfloat16
// products, round inputs and weights to bfloat16 and stay within that
// rounding of the float64 product (elsewhere the flag changes nothing).
TEST(Quant, LinearLayerWithBfloat16ProductsForPromptRows) {
  UseSeveralThreads();
  at::manual_seed(4);
  const int64_t n = 200, k = 136;
  const at::Tensor w = at::randn({n, k}) * 0.05;  // [out, in]
  const at::Tensor bias = at::randn({n});
  for (Format f : {Format::kQ8, Format::kQ4}) {
    const Linear lin(w, bias, f, /*bf16_products=*/true);
    const quant::Matrix& q = *lin.quantized();
    for (int64_t m : {1, 6, 48, 49, 130}) {
      const at::Tensor x = at::randn({m, k});  // [M, K]
      const at::Tensor y = lin(x);             // [M, N]
      at::Tensor plain = at::empty({m, n});
      quant::Multiply(q, x.data_ptr<float>(), m, bias.data_ptr<float>(), plain.data_ptr<float>(),
                      quant::DispatchedIsa());
      const bool bf16 = Linear::CpuBf16Available() && quant::PathFor(m) == Path::kFloatPanels;
      const std::string what = std::string(quant::FormatName(f)) + " m " + std::to_string(m);
      if (!bf16) {
        EXPECT_TRUE(at::equal(y, plain)) << what;
        continue;
      }
      EXPECT_FALSE(at::equal(y, plain)) << what << ": inputs rounded to bfloat16 change the sums";
      const Dequantized dq = Dequantize(q, /*bf16_panels=*/true);
      const at::Tensor xd = x.to(at::kDouble), wq = dq.w.to(at::kDouble).abs();
      const at::Tensor ref = at::matmul(xd, w.to(at::kDouble).t()) + bias.to(at::kDouble);
      // The weights' bound (quantization, bfloat16 copy), each input's
      // bfloat16 rounding (2^-8 relative, times |w'|), float32 sums.
      const at::Tensor bound = at::matmul(xd.abs(), dq.err.t()) +
                               std::ldexp(1.0, -8) * at::matmul(xd.abs(), wq.t()) +
                               1e-5 * at::matmul(xd.abs(), wq.t()) + 1e-5;
      const at::Tensor excess = (y.to(at::kDouble) - ref).abs() - bound;
      EXPECT_LE(excess.max().item<double>(), 0.0) << what;
    }
  }
}

}  // namespace
}  // namespace gritserve
