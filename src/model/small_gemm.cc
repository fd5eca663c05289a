#include "gritserve/model/small_gemm.h"

#include <algorithm>

#include "gritserve/common/error.h"
#include "gritserve/model/work_steal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define GRITSERVE_SMALL_GEMM 1
#include "avx512_tile.h"
#endif

namespace gritserve::small_gemm {

#ifdef GRITSERVE_SMALL_GEMM
namespace {

constexpr int64_t kPanel = avx512_tile::kCols;  // columns per packed panel (the layout's 64b)
constexpr int64_t kKBlock = 128;  // rows of a panel multiplied per pass: 32 KB of weights
constexpr int64_t kMaxRows = 64;
constexpr int64_t kLineBytes = avx512_tile::kLineBytes;

// Panel p of the product, asking for panel `next` (-1: none) to be brought
// into L2 while the last block of p is multiplied.
__attribute__((target("avx512f"))) void Panel(const float* a, int64_t m, int64_t k, const float* w,
                                              int64_t n, const float* bias, float* c, int64_t p,
                                              int64_t next) {
  const int64_t kpad = (k + 15) / 16 * 16;
  alignas(64) float acc[kMaxRows * kPanel];  // [m][64]: the panel's outputs
  const float* panel = w + p * kpad * kPanel;
  for (int64_t k0 = 0; k0 < k; k0 += kKBlock) {
    const int64_t kn = std::min(k, k0 + kKBlock) - k0;
    const float* block = panel + k0 * kPanel;  // [kn][64]
    // The block multiplied next (the next panel's first after the last) is
    // prefetched over this block's tiles, at most one line per inner step:
    // the bus works while the FMA units do. From 4 tiles (24 rows, see Suits)
    // the tiles have steps enough to cover all 4 lines per weight row.
    const bool last = k0 + kn >= k;
    const float* next_block = !last       ? block + kn * kPanel
                              : next >= 0 ? w + next * kpad * kPanel
                                          : nullptr;
    const int64_t next_rows = !last ? std::min(k, k0 + kn + kKBlock) - (k0 + kn) : kKBlock;
    const char* pf = reinterpret_cast<const char*>(next_block);
    const int64_t lines =
        next_block == nullptr ? 0 : std::min(kn, next_rows) * kPanel * 4 / kLineBytes;
    avx512_tile::Rows(m, a + k0, k, block, kPanel, kn, acc, kPanel, k0 > 0, pf, lines);
  }
  const int64_t cols = std::min(kPanel, n - p * kPanel);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t left = cols - 16 * j;
      if (left <= 0) break;
      __m512 v = _mm512_load_ps(acc + r * kPanel + 16 * j);
      float* dst = c + r * n + p * kPanel + 16 * j;
      const float* b = bias == nullptr ? nullptr : bias + p * kPanel + 16 * j;
      if (left >= 16) {  // masked loads and stores are slow on some cores: full vectors plain
        if (b != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(b));
        _mm512_storeu_ps(dst, v);
      } else {
        const auto mask = static_cast<__mmask16>((1u << left) - 1);
        if (b != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b));
        _mm512_mask_storeu_ps(dst, mask, v);
      }
    }
  }
}

}  // namespace

bool Available() { return __builtin_cpu_supports("avx512f"); }

void Run(const float* a, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
         float* c) {
  if (m < 1 || m > kMaxRows || !Available()) {
    throw Error(ErrorKind::kInternal, "small_gemm::Run called outside its row range or ISA");
  }
  const int64_t panels = (n + kPanel - 1) / kPanel;
  work_steal::ParallelFor(panels,
                          [&](int64_t p, int64_t next) { Panel(a, m, k, w, n, bias, c, p, next); });
}

#else  // not x86-64 GCC/Clang

bool Available() { return false; }

void Run(const float*, int64_t, int64_t, const float*, int64_t, const float*, float*) {
  throw Error(ErrorKind::kInternal, "small_gemm is not built for this CPU");
}

#endif

bool Suits(int64_t rows) { return rows >= 24 && rows <= 64; }

}  // namespace gritserve::small_gemm
