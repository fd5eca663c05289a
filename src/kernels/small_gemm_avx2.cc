// The bfloat16-panel product on AVX2 + FMA: small_gemm::RunBf16's sibling for
// CPUs without AVX-512 (and GRITSERVE_CPU_ISA=avx2), over the same packed
// panels, so a bfloat16 checkpoint computed in float32 keeps half the weight
// memory there too instead of widening every matrix to float32.
//
// Sixteen 8-lane registers hold less than AVX-512's 32 x 16: a tile is up to
// 3 rows against one 32-column half of a panel (12 accumulators), or, for a
// single row (decode), 1 row against the whole 64-column panel row (8), so a
// decode step still reads each weight row once per pass. A 256-bit load of a
// half holds 8 lanes of (column c, column c + 16) pairs: one shift and one
// mask widen them, exactly, to columns c.. and c + 16.. (see PackBf16).
#include "small_gemm_internal.h"

#ifdef GRITSERVE_SMALL_GEMM
#include <immintrin.h>

#include <algorithm>

#define GRITSERVE_AVX2 __attribute__((target("avx2,fma")))

namespace gritserve::small_gemm::detail {
namespace {

// acc[4h + q] after a load of half h, quarter q (q = 0: lanes 0-7, 1: 8-15)
// holds, low values then high, columns 32 h + kColumn[2q] and 32 h + kColumn[2q + 1].
constexpr int kColumn[4] = {0, 16, 8, 24};

// c[MR][64 H at column offset] (+)= a[MR][kn] b[kn][...], b the panel's rows
// (64 bfloat16 values each) starting at half `h0`, H halves wide. Up to two
// L2 prefetches per step for the lines [pf, pf + npf lines).
template <int MR, int H>
GRITSERVE_AVX2 void Tile(const float* a, int64_t lda, const uint16_t* b, int64_t kn, float* c,
                         bool accumulate, const char* pf, int64_t npf) {
  static_assert(MR * 4 * H <= 12, "accumulators, two widened values and a broadcast fit 16");
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  __m256 acc[MR][4 * H];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < 4 * H; ++v) {
      float* dst = c + r * kPanel + 32 * (v / 4) + kColumn[v % 4];
      acc[r][v] = accumulate ? _mm256_loadu_ps(dst) : _mm256_setzero_ps();
    }
  }
  for (int64_t k = 0; k < kn; ++k, b += kPanel) {
    if (k < npf) _mm_prefetch(pf + kLineBytes * k, _MM_HINT_T1);
    if (k + kn < npf) _mm_prefetch(pf + kLineBytes * (k + kn), _MM_HINT_T1);
      // Every loop over acc is unrolled so that GCC keeps it in registers:
      // with an index left a loop variable it keeps acc on the stack and
      // stores it after every FMA, which halved prompt throughput.
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
#pragma GCC unroll 2
      for (int q = 0; q < 2; ++q) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * h + 16 * q));
        const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(x, high));
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
          const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
          acc[r][4 * h + 2 * q] = _mm256_fmadd_ps(av, lo, acc[r][4 * h + 2 * q]);
          acc[r][4 * h + 2 * q + 1] = _mm256_fmadd_ps(av, hi, acc[r][4 * h + 2 * q + 1]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < 4 * H; ++v) {
      _mm256_storeu_ps(c + r * kPanel + 32 * (v / 4) + kColumn[v % 4], acc[r][v]);
    }
  }
}

using TileFn = void (*)(const float*, int64_t, const uint16_t*, int64_t, float*, bool, const char*,
                        int64_t);
constexpr TileFn kHalfTiles[4] = {nullptr, &Tile<1, 1>, &Tile<2, 1>, &Tile<3, 1>};

// Weight rows per widened chunk: 128 x 32 floats (16 KB) stay in L1 beside
// the tiles' rows of a.
constexpr int64_t kWideRows = 128;

// out[kn][32] = half h of block[kn][64] widened to float32, each row in the
// order a tile's accumulators take it (kColumn), prefetching `npf` lines
// from pf into L2 along the way.
GRITSERVE_AVX2 void WidenHalf(const uint16_t* block, int64_t h, int64_t kn, float* out,
                              const char* pf, int64_t npf) {
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int64_t k = 0; k < kn; ++k) {
    if (k < npf) _mm_prefetch(pf + kLineBytes * k, _MM_HINT_T1);
    for (int q = 0; q < 2; ++q) {
      const __m256i x = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(block + k * kPanel + 32 * h + 16 * q));
      _mm256_store_ps(out + 32 * k + 16 * q, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
      _mm256_store_ps(out + 32 * k + 16 * q + 8, _mm256_castsi256_ps(_mm256_and_si256(x, high)));
    }
  }
  for (int64_t k = kn; k < npf; ++k) _mm_prefetch(pf + kLineBytes * k, _MM_HINT_T1);
}

// c[MR][32 columns, kColumn order] (+)= a[MR][kn] w[kn][32], w widened by
// WidenHalf: four loads, MR broadcasts and 4 MR FMAs a step, no widening.
template <int MR>
GRITSERVE_AVX2 void WideTile(const float* a, int64_t lda, const float* w, int64_t kn, float* c,
                             bool accumulate) {
  __m256 acc[MR][4];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      float* dst = c + r * kPanel + kColumn[v];
      acc[r][v] = accumulate ? _mm256_loadu_ps(dst) : _mm256_setzero_ps();
    }
  }
  for (int64_t k = 0; k < kn; ++k, w += 32) {
    const __m256 w0 = _mm256_load_ps(w), w1 = _mm256_load_ps(w + 8);
    const __m256 w2 = _mm256_load_ps(w + 16), w3 = _mm256_load_ps(w + 24);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, w1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(av, w2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(av, w3, acc[r][3]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(c + r * kPanel + kColumn[v], acc[r][v]);
  }
}

using WideTileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, bool);
constexpr WideTileFn kWideTiles[4] = {nullptr, &WideTile<1>, &WideTile<2>, &WideTile<3>};

// Many rows: each half of each chunk of weight rows is widened once and then
// read, as float32, by every 3-row tile, where Tile widens it again for each.
GRITSERVE_AVX2 void WideRows(int64_t rows, const float* a, int64_t lda, const uint16_t* block,
                             int64_t kn, float* acc, bool accumulate, const char* pf,
                             int64_t lines) {
  alignas(32) float wide[kWideRows * 32];  // [chunk rows][32]
  const int64_t chunks = (kn + kWideRows - 1) / kWideRows, calls = 2 * chunks;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t k0 = ch * kWideRows, kc = std::min(kWideRows, kn - k0);
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t call = 2 * ch + h;
      const int64_t l0 = lines * call / calls, l1 = lines * (call + 1) / calls;
      WidenHalf(block + k0 * kPanel, h, kc, wide, pf == nullptr ? nullptr : pf + kLineBytes * l0,
                l1 - l0);
      for (int64_t row = 0; row < rows; row += 3) {
        const int64_t n = std::min<int64_t>(3, rows - row);
        kWideTiles[n](a + row * lda + k0, lda, wide, kc, acc + row * kPanel + 32 * h,
                      accumulate || k0 > 0);
      }
    }
  }
}

// acc[rows][64] (+)= a[rows][kn] block[kn][64], with `lines` cache lines from
// pf prefetched along the way, shared out over the tiles' steps.
GRITSERVE_AVX2 void Rows(int64_t rows, const float* a, int64_t lda, const uint16_t* block,
                         int64_t kn, float* acc, bool accumulate, const char* pf, int64_t lines) {
  if (rows == 1) {
    Tile<1, 2>(a, lda, block, kn, acc, accumulate, pf, lines);
    return;
  }
  if (rows > 6) return WideRows(rows, a, lda, block, kn, acc, accumulate, pf, lines);
  const int64_t tiles = (rows + 2) / 3, calls = 2 * tiles;
  int64_t row = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n = (rows - row + (tiles - t) - 1) / (tiles - t);  // even sizes: 3 3 2 2
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t call = 2 * t + h;
      const int64_t l0 = lines * call / calls, l1 = lines * (call + 1) / calls;
      kHalfTiles[n](a + row * lda, lda, block + 32 * h, kn, acc + row * kPanel + 32 * h, accumulate,
                    pf == nullptr ? nullptr : pf + kLineBytes * l0, l1 - l0);
    }
    row += n;
  }
}

// c[:, panel p] = acc (+ bias), for the m rows of acc ([m][64]).
GRITSERVE_AVX2 void Store(const float* acc, int64_t m, int64_t n, const float* bias, float* c,
                          int64_t p) {
  const int64_t cols = std::min(kPanel, n - p * kPanel);
  const float* b = bias == nullptr ? nullptr : bias + p * kPanel;
  for (int64_t r = 0; r < m; ++r) {
    float* dst = c + r * n + p * kPanel;
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256 v = _mm256_loadu_ps(acc + r * kPanel + j);
      if (b != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(dst + j, v);
    }
    for (; j < cols; ++j) dst[j] = acc[r * kPanel + j] + (b != nullptr ? b[j] : 0.0f);
  }
}

}  // namespace

GRITSERVE_AVX2 void PanelRowsAvx2(const float* a, int64_t m0, int64_t m, int64_t k,
                                  const uint16_t* panel, const uint16_t* next_panel, int64_t kblock,
                                  int64_t n, const float* bias, float* c, int64_t p) {
  alignas(32) float acc[kMaxBf16Rows * kPanel];  // [m][64]: the panel's outputs
  for (int64_t k0 = 0; k0 < k; k0 += kblock) {
    const KBlock<uint16_t> b = BlockAt(k0, k, kblock, panel, next_panel);  // block: [kn][64]
    Rows(m, a + m0 * k + k0, k, b.block, b.kn, acc, k0 > 0, reinterpret_cast<const char*>(b.next),
         b.lines);
  }
  Store(acc, m, n, bias, c + m0 * n, p);
}

}  // namespace gritserve::small_gemm::detail

#endif  // GRITSERVE_SMALL_GEMM
