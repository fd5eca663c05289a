// Kernel dispatch: the environment switches and the CPU's features, read in
// one place, decide which paths a model built now takes; an AVX-2-only choice
// (GRITSERVE_CPU_ISA=avx2) still computes the same products.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <iostream>
#include <string>

#include "gritserve/kernels/attention.h"
#include "gritserve/kernels/cpu_attention.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/kernels/small_gemm.h"

namespace gritserve {
namespace {

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    EXPECT_EQ(::setenv(name, value, 1), 0);
  }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

TEST(KernelDispatch, DefaultsFollowTheCpu) {
  const kernels::Dispatch d = kernels::Dispatch::Current();
  EXPECT_TRUE(d.fused);
  EXPECT_EQ(d.gemm, kernels::Gemm::kAuto);
  EXPECT_TRUE(d.huge_pages);
  EXPECT_EQ(d.isa, kernels::CpuHas(kernels::Isa::kAvx512) ? kernels::Isa::kAvx512
                   : kernels::CpuHas(kernels::Isa::kAvx2) ? kernels::Isa::kAvx2
                                                          : kernels::Isa::kBaseline);
  EXPECT_EQ(d.Describe(), kernels::IsaName(d.isa));
  std::cout << "kernel paths on this CPU: " << d.Describe() << "\n";
}

TEST(KernelDispatch, EachSwitchIsRead) {
  {
    ScopedEnv env("GRITSERVE_CPU_KERNELS", "aten");
    EXPECT_FALSE(kernels::Dispatch::Current().fused);
    EXPECT_NE(kernels::Dispatch::Current().Describe().find("GRITSERVE_CPU_KERNELS=aten"),
              std::string::npos);
    EXPECT_FALSE(kernels::AttentionBackend::For(at::Device(at::kCPU), at::kFloat).fused);
  }
  {
    ScopedEnv env("GRITSERVE_CPU_GEMM", "blas");
    EXPECT_EQ(kernels::Dispatch::Current().gemm, kernels::Gemm::kBlas);
    EXPECT_FALSE(Linear::CpuOneDnn());
    EXPECT_EQ(Linear::CpuBackend().rfind("LibTorch BLAS", 0), 0u);
  }
  {
    ScopedEnv env("GRITSERVE_CPU_GEMM", "onednn");
    EXPECT_EQ(kernels::Dispatch::Current().gemm, kernels::Gemm::kOneDnn);
  }
  {
    ScopedEnv env("GRITSERVE_HUGE_PAGES", "0");
    EXPECT_FALSE(kernels::Dispatch::Current().huge_pages);
  }
  {
    ScopedEnv env("GRITSERVE_CPU_ISA", "avx2");
    EXPECT_NE(kernels::Dispatch::Current().isa, kernels::Isa::kAvx512);
    EXPECT_FALSE(small_gemm::Available());
    // The one-pass attention and the bfloat16 panels have AVX2 siblings.
    EXPECT_EQ(cpu_attention::Available(), kernels::CpuHasAvx2());
    EXPECT_EQ(Linear::Bfloat16PanelsAvailable(), kernels::CpuHasAvx2());
    EXPECT_EQ(small_gemm::Bf16PanelIsa(),
              kernels::CpuHasAvx2() ? kernels::Isa::kAvx2 : kernels::Isa::kBaseline);
    const auto backend = kernels::AttentionBackend::For(at::Device(at::kCPU), at::kFloat);
    EXPECT_TRUE(backend.fused);
    EXPECT_EQ(backend.one_pass, kernels::CpuHasAvx2());
  }
  // Nothing is cached: the defaults are back.
  EXPECT_EQ(kernels::Dispatch::Current().isa == kernels::Isa::kAvx512,
            kernels::CpuHas(kernels::Isa::kAvx512));
}

// Linear layers and attention built with AVX-512 turned off equal a float64
// reference, as the default paths do.
TEST(KernelDispatch, Avx2PathsComputeTheSameProducts) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({96, 64});  // [out, in]
  const at::Tensor b = at::randn({96});
  const at::Tensor x = at::randn({40, 64});  // rows where the small-row kernel would run
  const at::Tensor ref = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t()) + b.to(at::kDouble);
  for (const char* isa : {"", "avx2"}) {
    ScopedEnv env("GRITSERVE_CPU_ISA", isa);
    Linear lin(w.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
    EXPECT_LT((lin(x).to(at::kDouble) - ref).abs().max().item<double>(), 1e-4) << isa;
    // bfloat16-valued weights: held as panels on either ISA, one row and many.
    const at::Tensor wb = w.to(at::kBFloat16).to(at::kFloat);
    Linear panels(wb.clone(), Linear::Layout::kOutIn, b, /*pack=*/true);
    EXPECT_EQ(panels.bfloat16_values(), Linear::Bfloat16PanelsAvailable()) << isa;
    for (int64_t m : {1, 3, 40}) {
      const at::Tensor xm = x.narrow(0, 0, m);
      const at::Tensor want =
          at::matmul(xm.to(at::kDouble), wb.to(at::kDouble).t()) + b.to(at::kDouble);
      EXPECT_LT((panels(xm).to(at::kDouble) - want).abs().max().item<double>(), 1e-4)
          << isa << " rows " << m;
    }

    // Attention: q [B, Hkv, G T, D], k/v [B, Hkv, S, D], mask [B, T, S].
    const int64_t g = 2, t = 12, s = 20, d = 64;
    const at::Tensor q = at::randn({1, 1, g * t, d}) / 8;
    const at::Tensor k = at::randn({1, 1, s, d}), v = at::randn({1, 1, s, d});
    const auto mask = kernels::AttentionMask::Dense(at::zeros({1, t, s}));
    const auto backend = kernels::AttentionBackend::For(at::Device(at::kCPU), at::kFloat);
    const at::Tensor got = kernels::Attention(backend, q, k, v, mask, 1.0, g);  // [T, G D]
    const at::Tensor p =
        at::softmax(at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(2, 3)), -1);
    const at::Tensor want =
        at::matmul(p, v.to(at::kDouble)).view({g, t, d}).transpose(0, 1).reshape({t, g * d});
    EXPECT_LT((got.to(at::kDouble) - want).abs().max().item<double>(), 1e-4) << isa;
  }
}

}  // namespace
}  // namespace gritserve
