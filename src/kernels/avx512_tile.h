// The register tile both AVX-512 float32 product kernels (small_gemm's
// packed-weight products, cpu_attention's QK and PV) are built from: up to 6
// rows of A against a 64-column block of B, 24 accumulators in registers.
// B is float32, or bfloat16 in small_gemm's interleaved panel layout (see
// LoadB), widened exactly in registers. x86-64 GCC/Clang only; callers check
// the CPU (avx512f) before calling.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace gritserve::avx512_tile {

constexpr int64_t kCols = 64;    // columns of B and C per tile: 4 vectors
constexpr int64_t kMaxRows = 6;  // 6 rows x 4 vectors = 24 accumulators
constexpr int64_t kLineBytes = 64;

namespace detail {

// One row of a 64-column B block as four 16-column float32 vectors.
__attribute__((target("avx512f"), always_inline)) inline void LoadB(const float* b,
                                                                    __m512 (&v)[4]) {
  for (int j = 0; j < 4; ++j) v[j] = _mm512_loadu_ps(b + 16 * j);
}

// The same from 64 bfloat16 values stored as two 32-value halves, each with
// columns c and c + 16 side by side (c, c+16, c+1, c+17, ...). A bfloat16 is
// the top half of a float32, so in each 32-bit lane the low value widens by a
// shift and the high one by clearing the low bits: exact, and two integer
// operations per 16 columns.
__attribute__((target("avx512f"), always_inline)) inline void LoadB(const uint16_t* b,
                                                                    __m512 (&v)[4]) {
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int h = 0; h < 2; ++h) {
    const __m512i x = _mm512_loadu_si512(b + 32 * h);
    v[2 * h] = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    v[2 * h + 1] = _mm512_castsi512_ps(_mm512_and_si512(x, high));
  }
}

// c[MR][64] (+)= a[MR][kn] b[kn][64], issuing up to two L2 prefetches per
// step for the lines [pf, pf + npf lines) (two where a bfloat16 block's lines
// outnumber the steps, as in a one-row tile).
//   a: rows at stride lda; b: rows at stride ldb (elements of B); c: rows at stride ldc
template <int MR, typename BT>
__attribute__((target("avx512f"))) void Tile(const float* a, int64_t lda, const BT* b, int64_t ldb,
                                             int64_t kn, float* c, int64_t ldc, bool accumulate,
                                             const char* pf, int64_t npf) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) {
      acc[r][j] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * j) : _mm512_setzero_ps();
    }
  }
  for (int64_t k = 0; k < kn; ++k, b += ldb) {
    if (k < npf) _mm_prefetch(pf + kLineBytes * k, _MM_HINT_T1);
    if (k + kn < npf) _mm_prefetch(pf + kLineBytes * (k + kn), _MM_HINT_T1);
    __m512 bv[4];
    LoadB(b, bv);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
  }
}

template <typename BT>
using TileFn = void (*)(const float*, int64_t, const BT*, int64_t, int64_t, float*, int64_t, bool,
                        const char*, int64_t);
template <typename BT>
constexpr TileFn<BT> kTiles[kMaxRows + 1] = {nullptr,      &Tile<1, BT>, &Tile<2, BT>, &Tile<3, BT>,
                                             &Tile<4, BT>, &Tile<5, BT>, &Tile<6, BT>};

}  // namespace detail

// c[rows][64] (+)= a[rows][kn] b[kn][64] in tiles of up to 6 rows of even
// size (32 rows: 6, 6, 5, 5, 5, 5), with the `lines` cache lines from pf
// prefetched into L2 along the way, shared out over the tiles' steps. Strides
// as in detail::Tile; BT is float or uint16_t (bfloat16 bits, see LoadB).
template <typename BT>
inline void Rows(int64_t rows, const float* a, int64_t lda, const BT* b, int64_t ldb, int64_t kn,
                 float* c, int64_t ldc, bool accumulate, const char* pf = nullptr,
                 int64_t lines = 0) {
  const int64_t tiles = (rows + kMaxRows - 1) / kMaxRows;
  int64_t row = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n = (rows - row + (tiles - t) - 1) / (tiles - t);
    const int64_t l0 = lines * t / tiles, l1 = lines * (t + 1) / tiles;
    detail::kTiles<BT>[n](a + row * lda, lda, b, ldb, kn, c + row * ldc, ldc, accumulate,
                          pf == nullptr ? nullptr : pf + kLineBytes * l0, l1 - l0);
    row += n;
  }
}

}  // namespace gritserve::avx512_tile
