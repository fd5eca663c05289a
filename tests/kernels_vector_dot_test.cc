// The float dot product that ranks collection vectors: every variant this CPU
// can run agrees with a float64 sum within the error bound of its summation
// order, on lengths that do and do not fill its sixteen lanes, and Dispatch
// picks the variant GRITSERVE_CPU_ISA allows.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/vector_dot.h"

namespace gritserve {
namespace {

struct Variant {
  std::string name;
  kernels::DotF32Fn fn;
};

std::vector<Variant> VariantsOfThisCpu() {
  std::vector<Variant> v{{"plain", kernels::DotF32Plain}};
  if (kernels::CpuHasAvx2()) v.push_back({"avx2", kernels::DotF32Avx2});
  if (kernels::CpuHasAvx512()) v.push_back({"avx512", kernels::DotF32Avx512});
  return v;
}

TEST(VectorDot, EveryVariantMatchesAFloat64Sum) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto variants = VariantsOfThisCpu();
  std::string covered;
  for (const auto& v : variants) covered += " " + v.name;
  std::cout << "dot variants covered:" << covered << "\n";
  for (size_t n : {0, 1, 7, 15, 16, 17, 33, 63, 64, 100, 896, 1000, 4097}) {
    std::vector<float> a(n), b(n);
    for (auto& x : a) x = normal(rng);
    for (auto& x : b) x = normal(rng) * 100.0f;  // scales apart: cancellation in the sum
    double want = 0, magnitude = 0;
    for (size_t i = 0; i < n; ++i) {
      want += static_cast<double>(a[i]) * b[i];
      magnitude += std::abs(static_cast<double>(a[i]) * b[i]);
    }
    // Sixteen lanes of n/16 terms each, then the lanes summed: each term passes
    // through at most n/16 + 17 float roundings (one for the product).
    const double bound = (static_cast<double>(n) / 16 + 17) * std::ldexp(1.0, -24) * magnitude;
    for (const auto& v : variants) {
      const double got = v.fn(a.data(), b.data(), n);
      EXPECT_LE(std::abs(got - want), bound) << v.name << " n=" << n;
    }
  }
}

TEST(VectorDot, DispatchPicksTheAllowedVariant) {
  const kernels::DotF32Fn picked = kernels::SelectDotF32(kernels::Dispatch::Current());
  if (kernels::CpuHasAvx512()) {
    EXPECT_EQ(picked, &kernels::DotF32Avx512);
  } else {
    EXPECT_EQ(picked, kernels::CpuHasAvx2() ? &kernels::DotF32Avx2 : &kernels::DotF32Plain);
  }
  ASSERT_EQ(::setenv("GRITSERVE_CPU_ISA", "avx2", 1), 0);
  const kernels::DotF32Fn capped = kernels::SelectDotF32(kernels::Dispatch::Current());
  ::unsetenv("GRITSERVE_CPU_ISA");
  EXPECT_NE(capped, &kernels::DotF32Avx512);
  EXPECT_EQ(capped, kernels::CpuHasAvx2() ? &kernels::DotF32Avx2 : &kernels::DotF32Plain);
}

}  // namespace
}  // namespace gritserve
