// The float32 register tile of cpu_attention's AVX2 path (QK and PV), the
// sibling of avx512_tile.h for CPUs without AVX-512 and GRITSERVE_CPU_ISA=avx2.
// Sixteen 8-lane registers hold a quarter of AVX-512's: a tile is up to 6 rows
// of A against 16 columns of B (12 accumulators, two B vectors, one
// broadcast), and a 64-column block is four such passes over the same rows of
// A, which stay in L1. x86-64 GCC/Clang only; callers check the CPU (avx2,
// fma) before calling.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace gritserve::avx2_tile {

constexpr int64_t kCols = 64;    // columns of B and C per block, as avx512_tile
constexpr int64_t kMaxRows = 6;  // 6 rows x 2 vectors = 12 accumulators

namespace detail {

// c[MR][16] (+)= a[MR][kn] b[kn][16].
//   a: rows at stride lda; b: rows at stride ldb; c: rows at stride ldc
template <int MR>
__attribute__((target("avx2,fma"))) void Tile(const float* a, int64_t lda, const float* b,
                                              int64_t ldb, int64_t kn, float* c, int64_t ldc,
                                              bool accumulate) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 2; ++j) {
      acc[r][j] = accumulate ? _mm256_loadu_ps(c + r * ldc + 8 * j) : _mm256_setzero_ps();
    }
  }
  for (int64_t k = 0; k < kn; ++k, b += ldb) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 2; ++j) _mm256_storeu_ps(c + r * ldc + 8 * j, acc[r][j]);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                        bool);
constexpr TileFn kTiles[kMaxRows + 1] = {nullptr,  &Tile<1>, &Tile<2>, &Tile<3>,
                                         &Tile<4>, &Tile<5>, &Tile<6>};

}  // namespace detail

// c[rows][64] (+)= a[rows][kn] b[kn][64] in tiles of up to 6 rows of even
// size, as avx512_tile::Rows (float32 B only, no prefetch).
inline void Rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kn,
                 float* c, int64_t ldc, bool accumulate) {
  const int64_t tiles = (rows + kMaxRows - 1) / kMaxRows;
  int64_t row = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n = (rows - row + (tiles - t) - 1) / (tiles - t);
    for (int64_t col = 0; col < kCols; col += 16) {
      detail::kTiles[n](a + row * lda, lda, b + col, ldb, kn, c + row * ldc + col, ldc, accumulate);
    }
    row += n;
  }
}

}  // namespace gritserve::avx2_tile
