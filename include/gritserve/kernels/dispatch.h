// Which CPU kernel paths may run: the CPU's features and the environment
// switches, read here and nowhere else. Layers and the decoder ask when they
// are built (at load), so a switch set before loading applies to that model.
//
//   GRITSERVE_CPU_KERNELS=aten   LibTorch's ops instead of the fused kernels
//   GRITSERVE_CPU_GEMM=blas      LibTorch's BLAS for linear layers (no oneDNN)
//   GRITSERVE_CPU_GEMM=onednn    oneDNN at every row count (no small-row kernel)
//   GRITSERVE_CPU_ISA=avx2       no AVX-512 paths even where the CPU has them
//   GRITSERVE_HUGE_PAGES=0       no transparent huge pages for streamed weights
//
// The first four are for side-by-side comparisons, tests of every path the
// machine has, and as escape hatches.
#pragma once

#include <string>

namespace gritserve::kernels {

enum class Gemm {
  kAuto,    // oneDNN where it has fast kernels, the small-row kernel for a few rows
  kBlas,    // LibTorch's BLAS only
  kOneDnn,  // oneDNN at every row count
};

struct Dispatch {
  bool fused = true;  // the fused CPU kernels (else LibTorch's ops)
  Gemm gemm = Gemm::kAuto;
  bool avx512 = false;     // AVX-512F paths: the CPU has them and GRITSERVE_CPU_ISA allows
  bool huge_pages = true;  // madvise(MADV_HUGEPAGE) for large streamed weights

  // Read now from the CPU and the environment (cheap: a few getenv calls).
  static Dispatch Current();
  // "avx512" or "avx2", and the switches that differ from their defaults.
  std::string Describe() const;
};

// Whether the CPU itself has AVX-512F (whatever GRITSERVE_CPU_ISA says).
bool CpuHasAvx512();
// AVX-512 F, BW, VL and VNNI (the int8 products of quantized weights), and
// AVX2 with FMA and F16C (their AVX2 siblings), likewise.
bool CpuHasAvx512Vnni();
bool CpuHasAvx2();

}  // namespace gritserve::kernels
