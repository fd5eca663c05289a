// Tests run once per instruction set this CPU has: a fixture that holds a
// kernels::ScopedIsa for its parameter while each test runs, the ISAs to
// instantiate it with, and a name suffix per ISA (baseline, avx2, avx512),
// so the suite's output says which copies it covered.
//   class MyKernels : public testing::IsaTest {};
//   GRITSERVE_INSTANTIATE_ISA_TESTS(MyKernels);
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "gritserve/kernels/dispatch.h"

namespace gritserve::testing {

class IsaTest : public ::testing::TestWithParam<kernels::Isa> {
 protected:
  void SetUp() override { isa_.emplace(GetParam()); }
  void TearDown() override { isa_.reset(); }

 private:
  std::optional<kernels::ScopedIsa> isa_;
};

inline std::vector<kernels::Isa> IsasThisCpuRuns() {
  std::vector<kernels::Isa> isas;
  for (kernels::Isa isa : {kernels::Isa::kBaseline, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (kernels::CpuHas(isa)) isas.push_back(isa);
  }
  return isas;
}

inline std::string IsaParamName(const ::testing::TestParamInfo<kernels::Isa>& info) {
  return kernels::IsaName(info.param);
}

}  // namespace gritserve::testing

#define GRITSERVE_INSTANTIATE_ISA_TESTS(FIXTURE)                                         \
  INSTANTIATE_TEST_SUITE_P(Isa, FIXTURE,                                                 \
                           ::testing::ValuesIn(::gritserve::testing::IsasThisCpuRuns()), \
                           ::gritserve::testing::IsaParamName)
