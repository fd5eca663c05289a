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
constexpr int64_t kLineBytes = 64;

// One pass of a panel product: weight rows [k0, k0 + kn) of a [k][64] panel,
// and what to prefetch into L2 meanwhile: the next block of this panel, or
// over the last block the first of the next panel (null: none), `lines`
// cache lines of it. Shared by the AVX-512 and AVX2 PanelRows; always
// inlined so that it compiles inside either's target.
template <typename BT>
struct KBlock {
  int64_t kn;
  const BT* block;
  const BT* next;
  int64_t lines;
};

template <typename BT>
__attribute__((always_inline)) inline KBlock<BT> BlockAt(int64_t k0, int64_t k, int64_t kblock,
                                                         const BT* panel, const BT* next_panel) {
  const int64_t end = k0 + kblock < k ? k0 + kblock : k;
  const int64_t kn = end - k0;
  const BT* block = panel + k0 * kPanel;
  const bool last = end >= k;
  const BT* next = !last ? block + kn * kPanel : next_panel;
  const int64_t next_rows = !last ? (end + kblock < k ? kblock : k - end) : kblock;
  const int64_t rows = next_rows < k ? next_rows : k;
  const int64_t lines =
      next == nullptr ? 0 : rows * kPanel * static_cast<int64_t>(sizeof(BT)) / kLineBytes;
  return {kn, block, next, lines};
}

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
