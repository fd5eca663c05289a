// GRITSERVE_CPU_ISA=avx2 switches oneDNN's own kernels to AVX2 too, not only
// ours: otherwise tests and benchmarks of the AVX2 paths on an AVX-512 machine
// would still run oneDNN's AVX-512 products. oneDNN takes the cap once per
// process, before its first primitive, so this test has a binary of its own and
// sets the switch before anything touches oneDNN.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <iostream>
#include <string>

#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/linear.h"

namespace gritserve {
namespace {

TEST(OneDnnIsa, Avx2SwitchCapsOneDnnForTheProcess) {
  ASSERT_EQ(::setenv("GRITSERVE_CPU_ISA", "avx2", 1), 0);
  at::manual_seed(5);
  const at::Tensor w = at::randn({80, 48});  // [out, in]
  const at::Tensor x = at::randn({100, 48});  // [rows, in]: past the small-row kernel
  Linear lin(w.clone(), Linear::Layout::kOutIn, at::Tensor(), /*pack=*/true);
  const at::Tensor ref = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
  EXPECT_LT((lin(x).to(at::kDouble) - ref).abs().max().item<double>(), 1e-4);

  const std::string backend = Linear::CpuBackend();
  std::cout << "with GRITSERVE_CPU_ISA=avx2: " << backend << "\n";
  EXPECT_EQ(backend.find("avx512"), std::string::npos) << backend;
  if (Linear::CpuOneDnn()) {
    // oneDNN is in use: it names its ISA, AVX2 (or AVX2 with VNNI) at most.
    EXPECT_NE(backend.find("(ISA avx2"), std::string::npos) << backend;
  }
  ::unsetenv("GRITSERVE_CPU_ISA");
}

}  // namespace
}  // namespace gritserve
