// The register tile both AVX-512 float32 product kernels (small_gemm's
// packed-weight product, cpu_attention's QK and PV) are built from: up to 6
// rows of A against a 64-column block of B, 24 accumulators in registers.
// x86-64 GCC/Clang only; callers check the CPU (avx512f) before calling.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace gritserve::avx512_tile {

constexpr int64_t kCols = 64;    // columns of B and C per tile: 4 vectors
constexpr int64_t kMaxRows = 6;  // 6 rows x 4 vectors = 24 accumulators
constexpr int64_t kLineBytes = 64;

namespace detail {

// c[MR][64] (+)= a[MR][kn] b[kn][64], issuing one L2 prefetch per step for
// the lines [pf, pf + npf lines).
//   a: rows at stride lda; b: rows at stride ldb; c: rows at stride ldc
template <int MR>
__attribute__((target("avx512f"))) void Tile(const float* a, int64_t lda, const float* b,
                                             int64_t ldb, int64_t kn, float* c, int64_t ldc,
                                             bool accumulate, const char* pf, int64_t npf) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) {
      acc[r][j] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * j) : _mm512_setzero_ps();
    }
  }
  for (int64_t k = 0; k < kn; ++k, b += ldb) {
    if (k < npf) _mm_prefetch(pf + kLineBytes * k, _MM_HINT_T1);
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    const __m512 b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(av, b3, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                        bool, const char*, int64_t);
constexpr TileFn kTiles[kMaxRows + 1] = {nullptr,  &Tile<1>, &Tile<2>, &Tile<3>,
                                         &Tile<4>, &Tile<5>, &Tile<6>};

}  // namespace detail

// c[rows][64] (+)= a[rows][kn] b[kn][64] in tiles of up to 6 rows of even
// size (32 rows: 6, 6, 5, 5, 5, 5), with the `lines` cache lines from pf
// prefetched into L2 along the way, shared out so each step asks for at most
// one. Strides as in detail::Tile.
inline void Rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kn,
                 float* c, int64_t ldc, bool accumulate, const char* pf = nullptr,
                 int64_t lines = 0) {
  const int64_t tiles = (rows + kMaxRows - 1) / kMaxRows;
  int64_t row = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n = (rows - row + (tiles - t) - 1) / (tiles - t);
    const int64_t l0 = lines * t / tiles, l1 = lines * (t + 1) / tiles;
    detail::kTiles[n](a + row * lda, lda, b, ldb, kn, c + row * ldc, ldc, accumulate,
                      pf == nullptr ? nullptr : pf + kLineBytes * l0, l1 - l0);
    row += n;
  }
}

}  // namespace gritserve::avx512_tile
