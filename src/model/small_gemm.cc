#include "gritserve/model/small_gemm.h"

#include <algorithm>

#include "gritserve/common/error.h"
#include "gritserve/model/work_steal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GRITSERVE_SMALL_GEMM 1
#endif

namespace gritserve::small_gemm {

#ifdef GRITSERVE_SMALL_GEMM
namespace {

constexpr int64_t kPanel = 64;    // columns per packed panel (the layout's 64b)
constexpr int64_t kKBlock = 128;  // rows of a panel multiplied per pass: 32 KB of weights
constexpr int64_t kTileRows = 6;  // 6 rows x 4 vectors = 24 accumulators
constexpr int64_t kMaxRows = 64;
constexpr int64_t kLineBytes = 64;

// acc[r] (+)= a[r, 0:kn] x b[0:kn, 0:64] for MR rows, issuing one L2 prefetch
// per step for the lines [pf, pf + npf lines).
//   a: rows of stride lda; b: [kn][64]; acc: [MR][64] (scratch, 64-byte aligned)
template <int MR>
__attribute__((target("avx512f"))) void Tile(const float* a, int64_t lda, const float* b,
                                             int64_t kn, float* acc_out, bool first, const char* pf,
                                             int64_t npf) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) {
      acc[r][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc_out + r * kPanel + 16 * j);
    }
  }
  for (int64_t k = 0; k < kn; ++k, b += kPanel) {
    if (k < npf) _mm_prefetch(pf + kLineBytes * k, _MM_HINT_T1);
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    const __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(av, b3, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) _mm512_store_ps(acc_out + r * kPanel + 16 * j, acc[r][j]);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, bool, const char*,
                        int64_t);
constexpr TileFn kTiles[kTileRows + 1] = {nullptr,  &Tile<1>, &Tile<2>, &Tile<3>,
                                          &Tile<4>, &Tile<5>, &Tile<6>};

// Panel p of the product, asking for panel `next` (-1: none) to be brought
// into L2 while the last block of p is multiplied.
__attribute__((target("avx512f"))) void Panel(const float* a, int64_t m, int64_t k, const float* w,
                                              int64_t n, const float* bias, float* c, int64_t p,
                                              int64_t next) {
  const int64_t kpad = (k + 15) / 16 * 16;
  const int64_t tiles = (m + kTileRows - 1) / kTileRows;
  alignas(64) float acc[kMaxRows * kPanel];  // [m][64]: the panel's outputs
  const float* panel = w + p * kpad * kPanel;
  for (int64_t k0 = 0; k0 < k; k0 += kKBlock) {
    const int64_t kn = std::min(k, k0 + kKBlock) - k0;
    const float* block = panel + k0 * kPanel;  // [kn][64]
    // The block multiplied next (the next panel's first after the last),
    // shared out over this block's tiles so that each inner step asks for at
    // most one line: the bus works while the FMA units do. From 4 tiles (24
    // rows, see Suits) the tiles have steps enough to cover all 4 lines per
    // weight row of the block.
    const bool last = k0 + kn >= k;
    const float* next_block = !last       ? block + kn * kPanel
                              : next >= 0 ? w + next * kpad * kPanel
                                          : nullptr;
    const int64_t next_rows = !last ? std::min(k, k0 + kn + kKBlock) - (k0 + kn) : kKBlock;
    const char* pf = reinterpret_cast<const char*>(next_block);
    const int64_t lines =
        next_block == nullptr ? 0 : std::min(kn, next_rows) * kPanel * 4 / kLineBytes;
    int64_t row = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t rows = (m - row + (tiles - t) - 1) / (tiles - t);  // even split
      const int64_t l0 = lines * t / tiles, l1 = lines * (t + 1) / tiles;
      kTiles[rows](a + row * k + k0, k, block, kn, acc + row * kPanel, k0 == 0,
                   pf == nullptr ? nullptr : pf + kLineBytes * l0, l1 - l0);
      row += rows;
    }
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
