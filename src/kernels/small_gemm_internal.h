// What small_gemm.cc and its AVX2 sibling (small_gemm_avx2.cc) share.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#define GRITSERVE_SMALL_GEMM 1
#endif

namespace gritserve::small_gemm::detail {

constexpr int64_t kPanel = 64;  // columns per packed panel (the layouts' 64b)
// Rows per item of the bfloat16-panel product: 96 rows of A by 256 deep
// (96 KB) stay in L2 while a thread walks the panels.
constexpr int64_t kMaxBf16Rows = 96;

#ifdef GRITSERVE_SMALL_GEMM
// Rows [m0, m0 + m) (m <= kMaxBf16Rows) of a [k][64] bfloat16 panel into
// columns [64 p, 64 p + 64) of c ([., n] row-major, + bias), `kblock` weight
// rows per pass, prefetching `next_panel` (null: none) into L2 over the last
// block: the AVX-512 PanelRows' contract, on AVX2 + FMA.
void PanelRowsAvx2(const float* a, int64_t m0, int64_t m, int64_t k, const uint16_t* panel,
                   const uint16_t* next_panel, int64_t kblock, int64_t n, const float* bias,
                   float* c, int64_t p);
#endif

}  // namespace gritserve::small_gemm::detail
