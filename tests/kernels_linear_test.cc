// Linear: every backend, layout and row count computes x W^T + b, checked
// against a float64 product.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>
#include <vector>

#include "gritserve/kernels/linear.h"
#include "gritserve/kernels/small_gemm.h"

namespace gritserve {
namespace {

struct Case {
  int64_t in, out;
  bool bias;
  Linear::Layout layout;
  bool pack;
};

// Reference in float64: [M, in] -> [M, out]
at::Tensor Reference(const at::Tensor& x, const at::Tensor& w_out_in, const at::Tensor& b) {
  at::Tensor y = at::matmul(x.to(at::kDouble), w_out_in.to(at::kDouble).t());
  if (b.defined()) y = y + b.to(at::kDouble);
  return y;
}

Linear Make(const Case& c, const at::Tensor& w_out_in, const at::Tensor& b) {
  at::Tensor w = c.layout == Linear::Layout::kOutIn ? w_out_in.clone() : w_out_in.t().contiguous();
  return Linear(w, c.layout, b, c.pack);
}

// x W^T + b for every row count the backends split at, and a strided input.
void CheckEveryRowCount(const Case& c, const at::Tensor& w, const at::Tensor& b,
                        bool expect_panels) {
  Linear lin = Make(c, w, b);
  EXPECT_EQ(lin.bfloat16_values(), expect_panels);
  EXPECT_EQ(lin.in_features(), c.in);
  EXPECT_EQ(lin.out_features(), c.out);
  for (int64_t m : {0, 1, 3, 17, 24, 32, 41, 64, 130}) {
    at::Tensor x = at::randn({m, c.in});  // [M, in]
    at::Tensor y = lin(x);                // [M, out]
    ASSERT_EQ(y.sizes(), (at::IntArrayRef{m, c.out})) << "rows " << m;
    ASSERT_EQ(y.scalar_type(), at::kFloat);
    if (m == 0) continue;
    const double err = (y.to(at::kDouble) - Reference(x, w, b)).abs().max().item<double>();
    EXPECT_LT(err, 1e-4) << "rows " << m;
  }
  // A strided input (a transposed view) is read correctly too.
  at::Tensor xt = at::randn({c.in, 5}).t();  // [5, in], not contiguous
  const double err = (lin(xt).to(at::kDouble) - Reference(xt, w, b)).abs().max().item<double>();
  EXPECT_LT(err, 1e-4);
}

class LinearTest : public ::testing::TestWithParam<Case> {};

TEST_P(LinearTest, MatchesFloat64ProductForEveryRowCount) {
  const Case c = GetParam();
  // Any float32 weights, then bfloat16-valued ones (a bfloat16 checkpoint),
  // which packed layers hold as bfloat16 panels where the CPU runs them.
  for (const bool bf16_values : {false, true}) {
    SCOPED_TRACE(bf16_values ? "bfloat16-valued weights" : "float32 weights");
    at::manual_seed(c.in * 1000 + c.out);
    at::Tensor w = at::randn({c.out, c.in}) * 0.1;  // [out, in]
    if (bf16_values) w = w.to(at::kBFloat16).to(at::kFloat);
    at::Tensor b = c.bias ? at::randn({c.out}) : at::Tensor();  // [out]
    CheckEveryRowCount(c, w, b, bf16_values && c.pack && Linear::Bfloat16PanelsAvailable());
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Values(Case{16, 24, false, Linear::Layout::kOutIn, true},
                                           Case{16, 24, true, Linear::Layout::kOutIn, true},
                                           Case{96, 200, true, Linear::Layout::kInOut, true},
                                           Case{96, 200, false, Linear::Layout::kOutIn, false},
                                           // one-row GEMV: row and column tails
                                           Case{37, 1001, true, Linear::Layout::kOutIn, false},
                                           Case{200, 96, true, Linear::Layout::kInOut, false},
                                           Case{64, 1, true, Linear::Layout::kOutIn, true},
                                           // two K blocks with a K tail, a column tail
                                           Case{150, 130, true, Linear::Layout::kOutIn, true},
                                           Case{1, 33, false, Linear::Layout::kOutIn, true}));

TEST(LinearBackend, PacksOnlyWhereTheBackendSaysSoAndBlasGivesTheSameAnswer) {
  at::manual_seed(3);
  at::Tensor w = at::randn({40, 72}) * 0.1;  // [out, in]
  at::Tensor b = at::randn({40});
  at::Tensor x = at::randn({9, 72});
  const bool onednn = Linear::CpuBackend().rfind("oneDNN", 0) == 0;
  Linear fast(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
  EXPECT_EQ(fast.packed(), onednn) << Linear::CpuBackend();

  ASSERT_EQ(::setenv("GRITSERVE_CPU_GEMM", "blas", 1), 0);
  EXPECT_EQ(Linear::CpuBackend().rfind("LibTorch BLAS", 0), 0u);
  Linear blas(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
  ASSERT_EQ(::unsetenv("GRITSERVE_CPU_GEMM"), 0);
  EXPECT_FALSE(blas.packed());
  EXPECT_LT((fast(x) - blas(x)).abs().max().item<double>(), 1e-5);
}

TEST(LinearBackend, Bfloat16PackingRoundsInputsAndWeightsOnlyWhereSupported) {
  at::manual_seed(5);
  at::Tensor w = at::randn({300, 200}) * 0.1;  // [out, in]
  at::Tensor b = at::randn({300});
  if (!Linear::CpuBf16Available()) {
    EXPECT_THROW(Linear(w, Linear::Layout::kOutIn, b, true, at::kBFloat16), std::exception);
    return;
  }
  Linear lin(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true, at::kBFloat16);
  EXPECT_TRUE(lin.packed());
  // Weights handed over in bfloat16 (as bfloat16-matmul models load them) pack
  // to the very same matrix.
  Linear from_bf16(w.to(at::kBFloat16), Linear::Layout::kOutIn, b, /*pack=*/true, at::kBFloat16);
  const at::Tensor probe = at::randn({5, 200});
  EXPECT_TRUE(at::equal(from_bf16(probe), lin(probe)));
  for (int64_t m : {1, 7, 32, 64}) {
    at::Tensor x = at::randn({m, 200});
    at::Tensor y = lin(x);  // [M, out] float32
    ASSERT_EQ(y.scalar_type(), at::kFloat);
    // Exactly what rounding both operands to bfloat16 and accumulating wide gives...
    at::Tensor rounded =
        Reference(x.to(at::kBFloat16).to(at::kFloat), w.to(at::kBFloat16).to(at::kFloat), b);
    EXPECT_LT((y.to(at::kDouble) - rounded).abs().max().item<double>(), 1e-3) << "rows " << m;
    // ...which is visibly not the float32 product, yet close to it.
    const double err = (y.to(at::kDouble) - Reference(x, w, b)).abs().max().item<double>();
    EXPECT_GT(err, 1e-5);
    EXPECT_LT(err, 0.05);
  }
}

TEST(LinearBackend, Bfloat16ValuedWeightsKeepFloat32ArithmeticFromBfloat16Panels) {
  at::manual_seed(6);
  // A bfloat16 checkpoint's matrix loaded in float32.
  const at::Tensor w = (at::randn({150, 200}) * 0.1).to(at::kBFloat16).to(at::kFloat);
  const at::Tensor b = at::randn({150});
  for (Linear::Layout layout : {Linear::Layout::kOutIn, Linear::Layout::kInOut}) {
    const at::Tensor src = layout == Linear::Layout::kOutIn ? w.clone() : w.t().contiguous();
    Linear lin(src, layout, b, /*pack=*/true);
    EXPECT_EQ(lin.bfloat16_values(), Linear::Bfloat16PanelsAvailable());
    EXPECT_TRUE(lin.packed() || !Linear::CpuOneDnn());
    for (int64_t m : {1, 3, 17, 32, 64, 130, 300}) {
      at::Tensor x = at::randn({m, 200});  // [M, in]
      const double err = (lin(x).to(at::kDouble) - Reference(x, w, b)).abs().max().item<double>();
      EXPECT_LT(err, 1e-4) << "rows " << m;  // float32 arithmetic: no rounding of x
    }
    at::Tensor xt = at::randn({200, 5}).t();  // [5, in], not contiguous
    EXPECT_LT((lin(xt).to(at::kDouble) - Reference(xt, w, b)).abs().max().item<double>(), 1e-4);
  }
  // Handed over in bfloat16 (as the engine loads a bfloat16 checkpoint): the
  // same layer, and widened to float32 where the panels are switched off.
  Linear from_bf16(w.to(at::kBFloat16), Linear::Layout::kOutIn, b, /*pack=*/true);
  EXPECT_EQ(from_bf16.bfloat16_values(), Linear::Bfloat16PanelsAvailable());
  const at::Tensor probe = at::randn({7, 200});
  EXPECT_TRUE(
      at::equal(from_bf16(probe), Linear(w.clone(), Linear::Layout::kOutIn, b, true)(probe)));
  ASSERT_EQ(::setenv("GRITSERVE_CPU_KERNELS", "aten", 1), 0);
  Linear widened(w.to(at::kBFloat16), Linear::Layout::kOutIn, b, /*pack=*/true);
  ASSERT_EQ(::unsetenv("GRITSERVE_CPU_KERNELS"), 0);
  EXPECT_FALSE(widened.bfloat16_values());
  EXPECT_LT((widened(probe).to(at::kDouble) - Reference(probe, w, b)).abs().max().item<double>(),
            1e-4);
  // One value that is not a bfloat16 number keeps the float32 copy.
  at::Tensor w2 = w.clone();
  w2[3][7] += 1e-6f;
  EXPECT_FALSE(Linear(w2, Linear::Layout::kOutIn, b, /*pack=*/true).bfloat16_values());
  // An explicit GEMM choice (here oneDNN everywhere) keeps its float32 path, with the same answer.
  ASSERT_EQ(::setenv("GRITSERVE_CPU_GEMM", "onednn", 1), 0);
  Linear onednn(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
  ASSERT_EQ(::unsetenv("GRITSERVE_CPU_GEMM"), 0);
  Linear lin(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
  at::Tensor x = at::randn({40, 200});
  EXPECT_LT((onednn(x) - lin(x)).abs().max().item<double>(), 1e-5);
}

// A bfloat16 model on a CPU without fast bfloat16 products (any AVX2 CPU)
// holds bfloat16 weights and biases and feeds bfloat16 rows to layers packed
// for float32 products. Those read and wrote float32 through bfloat16 buffers
// (heap corruption); now the rows are widened and the result narrowed back.
TEST(LinearBackend, Bfloat16RowsThroughFloat32PackedLayers) {
  at::manual_seed(7);
  const at::Tensor w = (at::randn({130, 96}) * 0.1).to(at::kBFloat16);  // [out, in]
  const at::Tensor b = at::randn({130}).to(at::kBFloat16);
  for (const bool pack : {true, false}) {
    Linear lin(w, Linear::Layout::kOutIn, b, pack);
    for (int64_t m : {1, 3, 32, 64, 130}) {
      const at::Tensor x = at::randn({m, 96}).to(at::kBFloat16);  // [M, in]
      const at::Tensor y = lin(x);
      ASSERT_EQ(y.scalar_type(), at::kBFloat16) << "rows " << m;
      ASSERT_EQ(y.sizes(), (at::IntArrayRef{m, 130}));
      // float32 arithmetic on the bfloat16 operands, rounded once at the end.
      const at::Tensor want = Reference(x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat));
      const double err = (y.to(at::kDouble) - want).abs().max().item<double>();
      EXPECT_LT(err, 2e-2 * want.abs().max().item<double>()) << "rows " << m << " pack " << pack;
    }
  }
}

TEST(LinearBackend, ConcurrentCallersWithDifferentRowCountsGetTheirOwnResults) {
  at::manual_seed(4);
  at::Tensor w = at::randn({48, 32}) * 0.1;  // [out, in]
  at::Tensor b = at::randn({48});
  const Linear lin(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
  std::vector<at::Tensor> inputs;
  for (int i = 0; i < 8; ++i) inputs.push_back(at::randn({1 + 5 * i, 32}));
  std::vector<double> errors(inputs.size(), 1e9);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < inputs.size(); ++i) {
    threads.emplace_back([&, i] {
      double worst = 0;
      for (int rep = 0; rep < 20; ++rep) {
        at::Tensor y = lin(inputs[i]);
        worst = std::max(
            worst, (y.to(at::kDouble) - Reference(inputs[i], w, b)).abs().max().item<double>());
      }
      errors[i] = worst;
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < errors.size(); ++i) EXPECT_LT(errors[i], 1e-4) << "caller " << i;
}

}  // namespace
}  // namespace gritserve
