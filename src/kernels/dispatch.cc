#include "gritserve/kernels/dispatch.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gritserve/common/error.h"

namespace gritserve::kernels {
namespace {

bool EnvIs(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// -1: none forced (ScopedIsa), else an Isa.
std::atomic<int> forced_isa{-1};
// -1: none forced (ScopedAvxVnni), else 0 or 1.
std::atomic<int> forced_avx_vnni{-1};

// The widest the CPU has and GRITSERVE_CPU_ISA allows.
Isa WidestAllowed() {
  if (CpuHas(Isa::kAvx512) && !EnvIs("GRITSERVE_CPU_ISA", "avx2")) return Isa::kAvx512;
  return CpuHas(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline;
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      break;
  }
  return "baseline";
}

bool CpuHas(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: {
      static const bool has =
          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && CpuHasAvx2();
      return has;
    }
    case Isa::kAvx2:
      return CpuHasAvx2();
    case Isa::kBaseline:
      break;
  }
  return true;
}

Isa ActiveIsa() {
  const int forced = forced_isa.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  static const Isa chosen = WidestAllowed();
  return chosen;
}

ScopedIsa::ScopedIsa(Isa isa) : previous_(forced_isa.load()) {
  if (!CpuHas(isa)) {
    throw Error(ErrorKind::kInternal, std::string("this CPU has no ") + IsaName(isa));
  }
  forced_isa.store(static_cast<int>(isa));
}

ScopedIsa::~ScopedIsa() { forced_isa.store(previous_); }

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

bool CpuHasAvxVnni() {
  // CPUID leaf 7, subleaf 1, EAX bit 4; GCC 12 and clang 14 differ on a
  // __builtin_cpu_supports name for it.
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return CpuHasAvx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) != 0 && (a & (1u << 4)) != 0;
  }();
  return has;
}

bool AvxVnniActive() {
  const int forced = forced_avx_vnni.load(std::memory_order_relaxed);
  if (forced >= 0) return forced == 1;
  static const bool chosen = CpuHasAvxVnni() && !EnvIs("GRITSERVE_CPU_AVXVNNI", "0");
  return chosen;
}

ScopedAvxVnni::ScopedAvxVnni(bool on) : previous_(forced_avx_vnni.load()) {
  if (on && !CpuHasAvxVnni()) throw Error(ErrorKind::kInternal, "this CPU has no AVX-VNNI");
  forced_avx_vnni.store(on ? 1 : 0);
}

ScopedAvxVnni::~ScopedAvxVnni() { forced_avx_vnni.store(previous_); }

Dispatch Dispatch::Current() {
  Dispatch d;
  d.fused = !EnvIs("GRITSERVE_CPU_KERNELS", "aten");
  d.gemm = EnvIs("GRITSERVE_CPU_GEMM", "blas")     ? Gemm::kBlas
           : EnvIs("GRITSERVE_CPU_GEMM", "onednn") ? Gemm::kOneDnn
                                                   : Gemm::kAuto;
  const int forced = forced_isa.load(std::memory_order_relaxed);
  d.isa = forced >= 0 ? static_cast<Isa>(forced) : WidestAllowed();
  d.huge_pages = !EnvIs("GRITSERVE_HUGE_PAGES", "0");
  return d;
}

std::string Dispatch::Describe() const {
  std::string s = IsaName(isa);
  if (isa == Isa::kAvx2 && AvxVnniActive()) s += " with AVX-VNNI";
  if (isa == Isa::kAvx2 && CpuHasAvxVnni() && !AvxVnniActive()) s += ", GRITSERVE_CPU_AVXVNNI=0";
  if (!fused) s += ", GRITSERVE_CPU_KERNELS=aten";
  if (gemm == Gemm::kBlas) s += ", GRITSERVE_CPU_GEMM=blas";
  if (gemm == Gemm::kOneDnn) s += ", GRITSERVE_CPU_GEMM=onednn";
  if (!huge_pages) s += ", GRITSERVE_HUGE_PAGES=0";
  return s;
}

}  // namespace gritserve::kernels
