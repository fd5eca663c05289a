#include "gritserve/kernels/dispatch.h"

#include <cstdlib>
#include <cstring>

namespace gritserve::kernels {
namespace {

bool EnvIs(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

}  // namespace

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

bool CpuHasAvx512Vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

bool CpuHasAvx2() {
  // F16C has no __builtin_cpu_supports name in GCC 12; every AVX2 CPU has it.
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

Dispatch Dispatch::Current() {
  Dispatch d;
  d.fused = !EnvIs("GRITSERVE_CPU_KERNELS", "aten");
  d.gemm = EnvIs("GRITSERVE_CPU_GEMM", "blas")     ? Gemm::kBlas
           : EnvIs("GRITSERVE_CPU_GEMM", "onednn") ? Gemm::kOneDnn
                                                   : Gemm::kAuto;
  d.avx512 = CpuHasAvx512() && !EnvIs("GRITSERVE_CPU_ISA", "avx2");
  d.huge_pages = !EnvIs("GRITSERVE_HUGE_PAGES", "0");
  return d;
}

std::string Dispatch::Describe() const {
  std::string s = avx512 ? "avx512" : "avx2";
  if (!fused) s += ", GRITSERVE_CPU_KERNELS=aten";
  if (gemm == Gemm::kBlas) s += ", GRITSERVE_CPU_GEMM=blas";
  if (gemm == Gemm::kOneDnn) s += ", GRITSERVE_CPU_GEMM=onednn";
  if (!huge_pages) s += ", GRITSERVE_HUGE_PAGES=0";
  return s;
}

}  // namespace gritserve::kernels
