// Which CPU kernel paths may run: the CPU's features and the environment
// switches, read here and nowhere else. Layers and the decoder ask when they
// are built (at load), so a switch set before loading applies to that model.
//
//   GRITSERVE_CPU_KERNELS=aten   LibTorch's ops instead of the fused kernels
//   GRITSERVE_CPU_GEMM=blas      LibTorch's BLAS for linear layers (no oneDNN)
//   GRITSERVE_CPU_GEMM=onednn    oneDNN at every row count (no small-row kernel)
//   GRITSERVE_CPU_ISA=avx2       no AVX-512 paths even where the CPU has them
//   GRITSERVE_CPU_AVXVNNI=0      the AVX2 int8 products without AVX-VNNI
//   GRITSERVE_HUGE_PAGES=0       no transparent huge pages for streamed weights
//
// The first five are for side-by-side comparisons, tests of every path the
// machine has, and as escape hatches.
#pragma once

#include <string>

namespace gritserve::kernels {

// The instruction sets the hand-written CPU kernels come in, narrowest first:
// one enum for every family (the fused loops, the one-pass attention, the
// bfloat16 panels, the quantized products, the dot products), so one switch
// and one name covers them all.
enum class Isa { kBaseline, kAvx2, kAvx512 };
const char* IsaName(Isa isa);  // "baseline", "avx2", "avx512"
// Whether the CPU runs `isa`: AVX2 with FMA and F16C; AVX-512 F, BW, VL and
// DQ. (The quantized products' AVX-512 copy also needs VNNI: quant::IsaAvailable.)
bool CpuHas(Isa isa);

enum class Gemm {
  kAuto,    // oneDNN where it has fast kernels, the small-row kernel for a few rows
  kBlas,    // LibTorch's BLAS only
  kOneDnn,  // oneDNN at every row count
};

struct Dispatch {
  bool fused = true;  // the fused CPU kernels (else LibTorch's ops)
  Gemm gemm = Gemm::kAuto;
  // The widest ISA the CPU has and GRITSERVE_CPU_ISA allows, or a test's
  // ScopedIsa while one lives.
  Isa isa = Isa::kBaseline;
  bool huge_pages = true;  // madvise(MADV_HUGEPAGE) for large streamed weights

  // Read now from the CPU and the environment (cheap: a few getenv calls).
  static Dispatch Current();
  // The ISA's name and the switches that differ from their defaults.
  std::string Describe() const;
};

// Dispatch::Current().isa for kernels that choose per call (the fused loops,
// the one-pass attention): GRITSERVE_CPU_ISA is read once per process here,
// a ScopedIsa still applies.
Isa ActiveIsa();

// For tests, process-wide: every family runs `isa` while this lives (layers
// built meanwhile keep it). Throws if the CPU lacks it.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa);
  ~ScopedIsa();
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  int previous_;
};

// Whether the CPU itself has AVX-512F (whatever GRITSERVE_CPU_ISA says).
bool CpuHasAvx512();
// AVX-512 F, BW, VL and VNNI (the int8 products of quantized weights), and
// AVX2 with FMA and F16C, likewise.
bool CpuHasAvx512Vnni();
bool CpuHasAvx2();
// AVX-VNNI: vpdpbusd on 8 lanes without AVX-512 (Alder Lake on, Sierra
// Forest, Zen 5), which the AVX2 family's int8 products use where present.
bool CpuHasAvxVnni();

// Whether the AVX2 int8 products use AVX-VNNI: the CPU has it and
// GRITSERVE_CPU_AVXVNNI is not 0 (read once per process), or a test's
// ScopedAvxVnni says so while it lives.
bool AvxVnniActive();

// For tests, process-wide, like ScopedIsa: the AVX2 int8 products run with
// (`on`) or without AVX-VNNI while this lives. Throws if `on` and the CPU
// lacks it.
class ScopedAvxVnni {
 public:
  explicit ScopedAvxVnni(bool on);
  ~ScopedAvxVnni();
  ScopedAvxVnni(const ScopedAvxVnni&) = delete;
  ScopedAvxVnni& operator=(const ScopedAvxVnni&) = delete;

 private:
  int previous_;
};

}  // namespace gritserve::kernels
