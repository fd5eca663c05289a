// The int8 row kernels of quantized weights on AVX2 (the AVX-512 VNNI
// kernels' sibling, and what GRITSERVE_CPU_ISA=avx2 runs), in two copies:
// maddubs for any AVX2 CPU, and AVX-VNNI's vpdpbusd where the CPU has it
// (kernels::AvxVnniActive; TileVnni below).
//
// A pair of blocks is two 32-byte halves; in each, maddubs multiplies
// unsigned by signed bytes into 16-bit pair sums and madd folds those into
// 8 lanes of 4 products, lanes alternating between the pair's two blocks as
// in the VNNI kernels. maddubs saturates at 16 bits: q4's codes (0..15) are
// small enough to go in unsigned as they are, while q8's are first made
// signed (c - 128) and multiplied as |x| times sign(x) w, which stays under
// 2 x 127 x 127 (llama.cpp's trick). q8 then needs no offset term; q4 adds
// its blocks' minimum times the activation sums (PairSums).
//
// Also here: the weights dequantized into small_gemm's bfloat16 panels for
// prompts on AVX2 (DequantizePanelAvx2), which the portable loop had done
// at a fifth of an AVX2 prompt's time.
#include "quant_internal.h"

#ifdef GRITSERVE_QUANT_X86
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#define GRITSERVE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define GRITSERVE_AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))

namespace gritserve::quant::detail {
namespace {

// Pair i's two half-precision scales as 8 lanes alternating between them.
GRITSERVE_AVX2 inline __m256 PairScales(const uint16_t* scales, int64_t i) {
  int32_t two;
  std::memcpy(&two, scales + 2 * i, sizeof two);
  return _mm256_cvtph_ps(_mm_set1_epi32(two));
}

GRITSERVE_AVX2 inline float Sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Blocks 2i and 2i + 1's activation sums in lanes 0 and 1 (a lane of each
// block), zeros elsewhere. Times the pair's minimums (q4) or -128 d (q8,
// AVX-VNNI) in the main loop's scaling step, they add each block's offset
// term: a pass over the blocks after the loop instead (per output, 28 blocks
// on the 0.5B shape's 896-wide rows) had cost about a quarter of a batched
// decode step here. (The AVX-512 kernel keeps that pass for q4, where one
// sequence's decode measured faster with it.)
GRITSERVE_AVX2 inline __m256 PairSums(const float* xc, int64_t i) {
  return _mm256_zextps128_ps256(
      _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(xc + 2 * i))));
}

// c[(j0 + j) n + r + rr] = lane sum of acc[rr][j] + bias[r + rr].
template <int R, int M>
GRITSERVE_AVX2 inline void Store(const __m256 (&acc)[R][M], int64_t r, int64_t j0, int64_t n,
                                 const float* bias, float* c) {
  for (int rr = 0; rr < R; ++rr) {
    for (int j = 0; j < M; ++j) {
      c[(j0 + j) * n + r + rr] = Sum(acc[rr][j]) + (bias != nullptr ? bias[r + rr] : 0.0f);
    }
  }
}

// Pair i of activation rows [j0, j0 + M), as both tiles read it: the codes'
// two 32-byte halves, the blocks' scales (8 lanes alternating, like the
// weights'), and with kSums the blocks' sums times `factor` (PairSums).
template <int M>
struct ActPair {
  __m256i lo[M], hi[M];
  __m256 sv[M], xo[M];
};

template <int M, bool kSums>
GRITSERVE_AVX2 inline void LoadActs(const Acts& x, int64_t j0, int64_t i, float factor,
                                    ActPair<M>& a) {
  for (int j = 0; j < M; ++j) {
    const int8_t* q = x.q + (j0 + j) * x.kp + i * kPair;
    a.lo[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q));
    a.hi[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32));
    a.sv[j] = _mm256_loadu_ps(x.sx + (j0 + j) * x.sx_stride + i * 16);
    if constexpr (kSums) {
      a.xo[j] = _mm256_mul_ps(PairSums(x.xc + (j0 + j) * x.xc_stride, i), _mm256_set1_ps(factor));
    }
  }
}

// Pair i of a weight row's codes as two 32-byte halves of unsigned bytes
// (q4: its nibbles; q8: as stored, c = w / d + 128).
template <bool kQ4>
GRITSERVE_AVX2 inline void LoadCodes(const uint8_t* row, int64_t i, __m256i& lo, __m256i& hi) {
  if constexpr (kQ4) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i * 32));
    lo = _mm256_and_si256(packed, nibble);
    hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
  } else {
    lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i * kPair));
    hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i * kPair + 32));
  }
}

// Weight rows [r, r + R) against activation rows [j0, j0 + M).
template <int R, int M, bool kQ4>
GRITSERVE_AVX2 void Tile(const Matrix& w, const Acts& x, int64_t r, int64_t j0, const float* bias,
                         float* c) {
  const int64_t pairs = w.pairs(), n = w.rows();
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 acc[R][M];
  for (int rr = 0; rr < R; ++rr) {
    for (int j = 0; j < M; ++j) acc[rr][j] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < pairs; ++i) {
    ActPair<M> a;
    LoadActs<M, kQ4>(x, j0, i, 1.0f, a);
    for (int rr = 0; rr < R; ++rr) {
      PrefetchNextTile(w.row(r + rr) + i * (kQ4 ? kBlock : kPair), R * w.stride());
    }
    for (int rr = 0; rr < R; ++rr) {
      const __m256 d = PairScales(w.scales(r + rr), i);
      const __m256 mins = kQ4 ? PairScales(w.mins(r + rr), i) : d;
      __m256i wlo, whi;
      LoadCodes<kQ4>(w.row(r + rr), i, wlo, whi);
      if constexpr (!kQ4) {  // signed, for the sign trick
        wlo = _mm256_xor_si256(wlo, offset);
        whi = _mm256_xor_si256(whi, offset);
      }
      for (int j = 0; j < M; ++j) {
        __m256i dot;
        if constexpr (kQ4) {
          // 2 x 2 x 15 x 127 fits in 16 bits: add before widening.
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(wlo, a.lo[j]),
                                             _mm256_maddubs_epi16(whi, a.hi[j]));
          dot = _mm256_madd_epi16(p, ones);
        } else {
          const __m256i p0 =
              _mm256_maddubs_epi16(_mm256_abs_epi8(a.lo[j]), _mm256_sign_epi8(wlo, a.lo[j]));
          const __m256i p1 =
              _mm256_maddubs_epi16(_mm256_abs_epi8(a.hi[j]), _mm256_sign_epi8(whi, a.hi[j]));
          dot = _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
        }
        acc[rr][j] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, a.sv[j]), acc[rr][j]);
        if constexpr (kQ4) acc[rr][j] = _mm256_fmadd_ps(mins, a.xo[j], acc[rr][j]);
      }
    }
  }
  Store<R, M>(acc, r, j0, n, bias, c);
}

// The same tile with AVX-VNNI's vpdpbusd: unsigned codes times signed
// activations, four products per lane summed in 32 bits with no 16-bit stage
// to saturate, so q8's codes go in as stored (c = w / d + 128). Their offset,
// -128 d times each block's activation sum, rides in the scaling step,
// acc += d (dot sx + xo): xo holds blocks 2i and 2i + 1's terms in lanes 0
// and 1 (a lane of each block), zeros elsewhere, and costs no instruction per
// weight row; q4's minimums come in as in Tile (PairSums).
template <int R, int M, bool kQ4>
GRITSERVE_AVXVNNI void TileVnni(const Matrix& w, const Acts& x, int64_t r, int64_t j0,
                                const float* bias, float* c) {
  const int64_t pairs = w.pairs(), n = w.rows();
  __m256 acc[R][M];
  for (int rr = 0; rr < R; ++rr) {
    for (int j = 0; j < M; ++j) acc[rr][j] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < pairs; ++i) {
    ActPair<M> a;
    LoadActs<M, true>(x, j0, i, kQ4 ? 1.0f : -128.0f, a);
    for (int rr = 0; rr < R; ++rr) {
      PrefetchNextTile(w.row(r + rr) + i * (kQ4 ? kBlock : kPair), R * w.stride());
    }
    for (int rr = 0; rr < R; ++rr) {
      const __m256 d = PairScales(w.scales(r + rr), i);
      const __m256 mins = kQ4 ? PairScales(w.mins(r + rr), i) : d;
      __m256i wlo, whi;
      LoadCodes<kQ4>(w.row(r + rr), i, wlo, whi);
      for (int j = 0; j < M; ++j) {
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), wlo, a.lo[j]), whi, a.hi[j]));
        if constexpr (kQ4) {
          acc[rr][j] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, a.sv[j]), acc[rr][j]);
          acc[rr][j] = _mm256_fmadd_ps(mins, a.xo[j], acc[rr][j]);
        } else {
          acc[rr][j] = _mm256_fmadd_ps(d, _mm256_fmadd_ps(dot, a.sv[j], a.xo[j]), acc[rr][j]);
        }
      }
    }
  }
  Store<R, M>(acc, r, j0, n, bias, c);
}

// Sixteen ymm registers: four weight rows against one activation row, or two
// against two. kVnni: TileVnni's step.
template <bool kQ4, bool kVnni>
void Rows(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1, const float* bias,
          float* c) {
  constexpr auto tile22 = kVnni ? TileVnni<2, 2, kQ4> : Tile<2, 2, kQ4>;
  constexpr auto tile12 = kVnni ? TileVnni<1, 2, kQ4> : Tile<1, 2, kQ4>;
  constexpr auto tile41 = kVnni ? TileVnni<4, 1, kQ4> : Tile<4, 1, kQ4>;
  constexpr auto tile11 = kVnni ? TileVnni<1, 1, kQ4> : Tile<1, 1, kQ4>;
  for (int64_t j = 0; j < m;) {
    const bool two = m - j >= 2;
    int64_t r = r0;
    if (two) {
      for (; r + 2 <= r1; r += 2) tile22(w, x, r, j, bias, c);
      for (; r < r1; ++r) tile12(w, x, r, j, bias, c);
    } else {
      for (; r + 4 <= r1; r += 4) tile41(w, x, r, j, bias, c);
      for (; r < r1; ++r) tile11(w, x, r, j, bias, c);
    }
    j += two ? 2 : 1;
  }
}

// Pair i of row r's 64 values in element order, block 2i's 32 then block
// 2i + 1's (the padding past the last column included).  out: [64]
template <bool kQ4>
GRITSERVE_AVX2 inline void DequantizePair(const Matrix& w, int64_t r, int64_t i, float* out) {
  __m256i lo, hi;
  LoadCodes<kQ4>(w.row(r), i, lo, hi);
  // Dwords alternate between the blocks: each 128-bit lane takes one block's.
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  lo = _mm256_permutevar8x32_epi32(lo, order);  // block 0's values 0..15 | block 1's
  hi = _mm256_permutevar8x32_epi32(hi, order);  // values 16..31, the same way
  const __m256 d = PairScales(w.scales(r), i);  // lanes alternate d0, d1
  const __m256 m = kQ4 ? PairScales(w.mins(r), i) : _mm256_mul_ps(d, _mm256_set1_ps(-128.0f));
  for (int h = 0; h < 2; ++h) {
    const __m256 dh = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(h));
    const __m256 mh = _mm256_permutevar8x32_ps(m, _mm256_set1_epi32(h));
    const __m128i sixteen[2] = {
        h == 0 ? _mm256_castsi256_si128(lo) : _mm256_extracti128_si256(lo, 1),
        h == 0 ? _mm256_castsi256_si128(hi) : _mm256_extracti128_si256(hi, 1)};
    for (int s = 0; s < 2; ++s) {
      const __m128i bytes = sixteen[s];
      const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
      const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)));
      _mm256_storeu_ps(out + 32 * h + 16 * s, _mm256_fmadd_ps(v0, dh, mh));
      _mm256_storeu_ps(out + 32 * h + 16 * s + 8, _mm256_fmadd_ps(v1, dh, mh));
    }
  }
}

// float32 to bfloat16 bits (in the low half of each lane), rounded to
// nearest even (finite values).
GRITSERVE_AVX2 inline __m256i RoundBf16(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd)),
                           16);
}

// 16 float32 values to bfloat16, in order.
GRITSERVE_AVX2 inline __m256i ToBf16(__m256 a, __m256 b) {
  // packus works within 128-bit lanes (a0-3 b0-3 a4-7 b4-7): put the quarters back in order.
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(RoundBf16(a), RoundBf16(b)), 0xD8);
}

template <bool kQ4>
GRITSERVE_AVX2 void DequantizePanel(const Matrix& w, int64_t r0, int64_t rows, uint16_t* panel) {
  // As DequantizePanelAvx512: one half (32 rows) of one pair at a time into
  // an L1-sized buffer, read back one k at a time with gathers, so each k's
  // 32 values go out as two contiguous 32-byte stores. A half's slot s holds
  // row s / 2 (s even) or 16 + s / 2 (s odd).
  alignas(32) float buf[32 * kPair];  // [32 rows][64 values]
  __m256i idx[4];                     // slots 8q..8q+7's offsets in buf
  for (int q = 0; q < 4; ++q) {
    const __m256i rows8 =
        _mm256_add_epi32(_mm256_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19), _mm256_set1_epi32(4 * q));
    idx[q] = _mm256_mullo_epi32(rows8, _mm256_set1_epi32(static_cast<int32_t>(kPair)));
  }
  const int64_t cols = w.cols();
  for (int64_t i = 0; i < w.pairs(); ++i) {
    const int64_t k0 = i * kPair, kn = std::min(kPair, cols - k0);
    for (int h = 0; h < 2; ++h) {
      for (int c = 0; c < 32; ++c) {
        float* dst = buf + c * kPair;
        if (h * 32 + c < rows) {
          DequantizePair<kQ4>(w, r0 + h * 32 + c, i, dst);
        } else {
          std::memset(dst, 0, kPair * sizeof(float));
        }
      }
      for (int64_t kk = 0; kk < kn; ++kk) {
        __m256 v[4];
        for (int q = 0; q < 4; ++q) v[q] = _mm256_i32gather_ps(buf + kk, idx[q], 4);
        uint16_t* out = panel + (k0 + kk) * 64 + 32 * h;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), ToBf16(v[0], v[1]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), ToBf16(v[2], v[3]));
      }
    }
  }
}

}  // namespace

void DequantizePanelAvx2(const Matrix& w, int64_t r0, int64_t rows, uint16_t* panel) {
  if (w.format() == Format::kQ4) {
    DequantizePanel<true>(w, r0, rows, panel);
  } else {
    DequantizePanel<false>(w, r0, rows, panel);
  }
}

void RowsAvx2(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1, const float* bias,
              float* c) {
  if (w.format() == Format::kQ4) {
    Rows<true, false>(w, x, m, r0, r1, bias, c);
  } else {
    Rows<false, false>(w, x, m, r0, r1, bias, c);
  }
}

void RowsAvxVnni(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                 const float* bias, float* c) {
  if (w.format() == Format::kQ4) {
    Rows<true, true>(w, x, m, r0, r1, bias, c);
  } else {
    Rows<false, true>(w, x, m, r0, r1, bias, c);
  }
}

}  // namespace gritserve::quant::detail
#endif  // GRITSERVE_QUANT_X86
