// The int8 row kernels of quantized weights on AVX-512 VNNI.
//
// Per pair of blocks (64 values), one vpdpbusd multiplies the weights'
// unsigned codes by the activations' signed int8 codes and leaves, in each of
// its 16 lanes, the sum of 4 products of one block (lanes alternate between
// the pair's two blocks, as the layout interleaves them). The lanes go to
// float32 and into the accumulator times (weight scale x activation scale)
// of their block. The codes' offset (q8: c - 128) or the blocks' minimum
// (q4) adds min x (activation scale x sum of activation codes) per block,
// summed once per row and activation row after the main loop.
#include "quant_internal.h"

#ifdef GRITSERVE_QUANT_X86
// GCC 12 flags the _mm512_undefined_* pass-through operands inside its own
// AVX-512 headers once they are inlined (the 256-to-512-bit casts).
#ifndef __clang__  // a GCC-only warning
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstring>

#define GRITSERVE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))

namespace gritserve::quant::detail {
namespace {

// Pair i's 64 codes, one byte each.
template <bool kQ4>
GRITSERVE_VNNI inline __m512i Codes(const uint8_t* row, int64_t i) {
  if constexpr (kQ4) {
    // Byte j of a packed pair holds positions j (low nibble) and 32 + j (high).
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i * 32));
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(packed, nibble);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  } else {
    return _mm512_loadu_si512(row + i * kPair);
  }
}

// Pair i's two half-precision scales as 16 lanes alternating between them.
GRITSERVE_VNNI inline __m512 PairScales(const uint16_t* scales, int64_t i) {
  int32_t two;
  std::memcpy(&two, scales + 2 * i, sizeof two);
  return _mm512_cvtph_ps(_mm256_set1_epi32(two));
}

// Sum over blocks of v[b] xc[b], v in half precision (xc is zero past the
// last block, up to a multiple of 16): q4's minimums' term.
GRITSERVE_VNNI inline float MinTerm(const uint16_t* v, const float* xc, int64_t blocks) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; b += 16) {
    const auto lanes =
        static_cast<__mmask16>(blocks - b >= 16 ? 0xFFFFu : (1u << (blocks - b)) - 1);
    const __m256i h = _mm256_maskz_loadu_epi16(lanes, v + b);
    acc = _mm512_fmadd_ps(_mm512_cvtph_ps(h), _mm512_loadu_ps(xc + b), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Weight rows [r, r + R) against activation rows [j0, j0 + M).
template <int R, int M, bool kQ4>
GRITSERVE_VNNI void Tile(const Matrix& w, const Acts& x, int64_t r, int64_t j0, const float* bias,
                         float* c) {
  const int64_t pairs = w.pairs(), n = w.rows();
  const uint8_t* rows[R];
  const uint16_t* scales[R];
  for (int rr = 0; rr < R; ++rr) rows[rr] = w.row(r + rr), scales[rr] = w.scales(r + rr);
  __m512 acc[R][M];
  for (int rr = 0; rr < R; ++rr) {
    for (int j = 0; j < M; ++j) acc[rr][j] = _mm512_setzero_ps();
  }
  const int8_t* xq = x.q + j0 * x.kp;
  const float* xs = x.sx + j0 * x.sx_stride;
  const float* xc = x.xc + j0 * x.xc_stride;
  const __m512 minus128 = _mm512_set1_ps(-128.0f);
  for (int64_t i = 0; i < pairs; ++i) {
    __m512i xv[M];
    __m512 sv[M], xo[M];
    for (int j = 0; j < M; ++j) {
      xv[j] = _mm512_load_si512(xq + j * x.kp + i * kPair);
      sv[j] = _mm512_loadu_ps(xs + j * x.sx_stride + i * 16);
      // q8's offset, -128 d times each block's activation sum, rides in the
      // scaling step, acc += d (dot sx + xo): xo holds blocks 2i and 2i + 1's
      // terms in lanes 0 and 1 (a lane of each block), zeros elsewhere, and
      // costs no instruction per weight row. (A pass over the blocks after the
      // loop had cost a fifth of a batched step on 896-wide rows.) q4's
      // minimums take that pass: in the loop they would add a conversion per
      // row and pair, which one sequence's decode felt.
      if constexpr (!kQ4) {
        xo[j] = _mm512_mul_ps(_mm512_zextps128_ps512(_mm_castpd_ps(_mm_load_sd(
                                  reinterpret_cast<const double*>(xc + j * x.xc_stride + 2 * i)))),
                              minus128);
      }
    }
    for (int rr = 0; rr < R; ++rr)
      PrefetchNextTile(rows[rr] + i * (kQ4 ? kBlock : kPair), R * w.stride());
    for (int rr = 0; rr < R; ++rr) {
      const __m512i wv = Codes<kQ4>(rows[rr], i);
      const __m512 d = PairScales(scales[rr], i);
      for (int j = 0; j < M; ++j) {
        const __m512 dot =
            _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv[j]));
        if constexpr (kQ4) {
          acc[rr][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d, sv[j]), acc[rr][j]);
        } else {
          acc[rr][j] = _mm512_fmadd_ps(d, _mm512_fmadd_ps(dot, sv[j], xo[j]), acc[rr][j]);
        }
      }
    }
  }
  for (int rr = 0; rr < R; ++rr) {
    for (int j = 0; j < M; ++j) {
      const float min_term =
          kQ4 ? MinTerm(w.mins(r + rr), x.xc + (j0 + j) * x.xc_stride, 2 * pairs) : 0.0f;
      c[(j0 + j) * n + r + rr] =
          _mm512_reduce_add_ps(acc[rr][j]) + min_term + (bias != nullptr ? bias[r + rr] : 0.0f);
    }
  }
}

template <int R, bool kQ4>
void RowGroup(const Matrix& w, const Acts& x, int64_t m, int64_t r, const float* bias, float* c) {
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) Tile<R, 4, kQ4>(w, x, r, j, bias, c);
  switch (m - j) {
    case 3:
      Tile<R, 3, kQ4>(w, x, r, j, bias, c);
      break;
    case 2:
      Tile<R, 2, kQ4>(w, x, r, j, bias, c);
      break;
    case 1:
      Tile<R, 1, kQ4>(w, x, r, j, bias, c);
      break;
    default:
      break;
  }
}

template <bool kQ4>
void Rows(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1, const float* bias,
          float* c) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) RowGroup<4, kQ4>(w, x, m, r, bias, c);
  for (; r < r1; ++r) RowGroup<1, kQ4>(w, x, m, r, bias, c);
}

// Bytes 16q..16q+15 of v. The extract's lane index must be a literal for clang
// even where the loop around it is unrolled; the switch folds away.
GRITSERVE_VNNI inline __m128i Quarter(__m512i v, int q) {
  switch (q) {
    case 0:
      return _mm512_extracti32x4_epi32(v, 0);
    case 1:
      return _mm512_extracti32x4_epi32(v, 1);
    case 2:
      return _mm512_extracti32x4_epi32(v, 2);
    default:
      return _mm512_extracti32x4_epi32(v, 3);
  }
}

}  // namespace

namespace {

// Pair i of row r's 64 values (the padding past the last column included).  out: [64]
GRITSERVE_VNNI inline void DequantizePair(const Matrix& w, int64_t r, int64_t i, float* out) {
  const bool q4 = w.format() == Format::kQ4;
  // Dwords of a pair alternate between its blocks: gather block 0's eight, then block 1's.
  const __m512i order = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const uint8_t* row = w.row(r);
  const __m512i codes =
      _mm512_permutexvar_epi32(order, q4 ? Codes<true>(row, i) : Codes<false>(row, i));
  const __m512 d = PairScales(w.scales(r), i);  // lanes alternate d0, d1
  __m512 m;
  if (q4) {
    int32_t two;
    std::memcpy(&two, w.mins(r) + 2 * i, sizeof two);
    m = _mm512_cvtph_ps(_mm256_set1_epi32(two));
  } else {
    m = _mm512_mul_ps(d, _mm512_set1_ps(-128.0f));
  }
  for (int q = 0; q < 4; ++q) {  // 16 values; the first two quarters are block 0
    const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(Quarter(codes, q)));
    const int lane = q / 2;  // block of this quarter: lane 0 holds d0 / m0, lane 1 d1 / m1
    const __m512 dq = _mm512_permutexvar_ps(_mm512_set1_epi32(lane), d);
    const __m512 mq = _mm512_permutexvar_ps(_mm512_set1_epi32(lane), m);
    _mm512_storeu_ps(out + 16 * q, _mm512_fmadd_ps(v, dq, mq));
  }
}

// float32 to bfloat16, rounded to nearest even (finite values), in AVX-512F
// alone: VNNI CPUs without AVX512_BF16 run this too.
GRITSERVE_VNNI inline __m256i ToBf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

}  // namespace

GRITSERVE_VNNI void DequantizePanelAvx512(const Matrix& w, int64_t r0, int64_t rows,
                                          uint16_t* panel) {
  // One half (32 rows) of one pair (64 values) at a time, dequantized into
  // an L1-sized buffer row by row and read back a column (one k) at a time,
  // so each k's 32 values go out as one contiguous 64-byte store instead of
  // 32 two-byte stores a cache line apart. A half's slot s holds row s / 2
  // (s even) or 16 + s / 2 (s odd): small_gemm::PackBf16's interleave.
  alignas(64) float buf[32 * kPair];  // [32 rows][64 values]
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i stride = _mm512_set1_epi32(static_cast<int32_t>(kPair));
  const __m512i idx_lo = _mm512_mullo_epi32(lo, stride);
  const __m512i idx_hi = _mm512_mullo_epi32(_mm512_add_epi32(lo, _mm512_set1_epi32(8)), stride);
  const int64_t cols = w.cols();
  for (int64_t i = 0; i < w.pairs(); ++i) {
    const int64_t k0 = i * kPair, kn = std::min(kPair, cols - k0);
    for (int h = 0; h < 2; ++h) {
      for (int c = 0; c < 32; ++c) {
        float* dst = buf + c * kPair;
        if (h * 32 + c < rows) {
          DequantizePair(w, r0 + h * 32 + c, i, dst);
        } else {
          std::memset(dst, 0, kPair * sizeof(float));
        }
      }
      for (int64_t kk = 0; kk < kn; ++kk) {
        const __m512 a = _mm512_i32gather_ps(idx_lo, buf + kk, 4);  // slots 0..15
        const __m512 b = _mm512_i32gather_ps(idx_hi, buf + kk, 4);  // slots 16..31
        uint16_t* out = panel + (k0 + kk) * 64 + 32 * h;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), ToBf16(a));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), ToBf16(b));
      }
    }
  }
}

GRITSERVE_VNNI void DequantizeRowBf16Avx512(const Matrix& w, int64_t r, uint16_t* dst) {
  alignas(64) float buf[kPair];
  const int64_t cols = w.cols();
  for (int64_t i = 0; i < w.pairs(); ++i) {
    const int64_t k0 = i * kPair;
    DequantizePair(w, r, i, buf);
    if (cols - k0 >= kPair) {
      for (int q = 0; q < 4; ++q) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k0 + 16 * q),
                            ToBf16(_mm512_load_ps(buf + 16 * q)));
      }
    } else {  // the last, partial pair
      alignas(32) uint16_t bits[kPair];
      for (int q = 0; q < 4; ++q) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(bits + 16 * q),
                           ToBf16(_mm512_load_ps(buf + 16 * q)));
      }
      std::memcpy(dst + k0, bits, static_cast<size_t>(cols - k0) * sizeof(uint16_t));
    }
  }
}

void RowsAvx512Vnni(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                    const float* bias, float* c) {
  if (w.format() == Format::kQ4) {
    Rows<true>(w, x, m, r0, r1, bias, c);
  } else {
    Rows<false>(w, x, m, r0, r1, bias, c);
  }
}

}  // namespace gritserve::quant::detail
#endif  // GRITSERVE_QUANT_X86
