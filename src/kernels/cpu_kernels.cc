#include "gritserve/kernels/cpu_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 flags the _mm512_undefined_* pass-through operands inside its own
// AVX-512 headers once they are inlined.
#ifndef __clang__  // a GCC-only warning
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#include "gritserve/common/error.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/work_steal.h"

// Each hot loop below is written once, as an always-inlined body, and
// compiled three times by GRITSERVE_ISA_VARIANTS: for AVX-512, for AVX2 with
// FMA, and for baseline x86-64, each copy vectorized at its own width. Every
// call picks one through ActiveIsa(), so GRITSERVE_CPU_ISA=avx2 switches these
// loops as it does the other kernels, and tests run each copy (ScopedIsa).
// Inside a body, only always-inlined helpers (no std::min and the like):
// GCC does not inline an ordinary function into a caller of another target,
// and a call left in a loop keeps it scalar.
#define GRITSERVE_LOOP __attribute__((always_inline)) inline
#if defined(__x86_64__) && defined(__GNUC__)
#define GRITSERVE_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")))
#define GRITSERVE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define GRITSERVE_TARGET_AVX512
#define GRITSERVE_TARGET_AVX2
#endif
// NAME(PARAMS) calls NAME##Body(ARGS) compiled for the active ISA.
#define GRITSERVE_ISA_VARIANTS(NAME, PARAMS, ARGS)                      \
  GRITSERVE_TARGET_AVX512 void NAME##Avx512 PARAMS { NAME##Body ARGS; } \
  GRITSERVE_TARGET_AVX2 void NAME##Avx2 PARAMS { NAME##Body ARGS; }     \
  void NAME##Baseline PARAMS { NAME##Body ARGS; }                       \
  void NAME PARAMS {                                                    \
    switch (ActiveIsa()) {                                              \
      case Isa::kAvx512:                                                \
        return NAME##Avx512 ARGS;                                       \
      case Isa::kAvx2:                                                  \
        return NAME##Avx2 ARGS;                                         \
      case Isa::kBaseline:                                              \
        break;                                                          \
    }                                                                   \
    NAME##Baseline ARGS;                                                \
  }

namespace gritserve::cpu_kernels {

using kernels::ActiveIsa;
using kernels::Isa;

namespace {

// Rows per parallel task such that each task touches at least ~32K floats:
// below that, waking the second thread costs more than the work.
int64_t RowGrain(int64_t row_floats) {
  return std::max<int64_t>(1, (int64_t{32} << 10) / std::max<int64_t>(1, row_floats));
}

// Rows [0, rows) of a weight-streaming product in pieces of about 256 KB,
// shared out with work stealing: these loops are bound by memory bandwidth,
// which neighbours on the bus take unevenly from the two cores.
template <class Fn>
void StreamRows(int64_t rows, int64_t row_bytes, const Fn& fn) {
  const int64_t piece =
      std::max<int64_t>(1, (int64_t{256} << 10) / std::max<int64_t>(1, row_bytes));
  work_steal::ParallelFor((rows + piece - 1) / piece, [&](int64_t i, int64_t) {
    fn(i * piece, std::min(rows, (i + 1) * piece));
  });
}

GRITSERVE_LOOP float BitsToFloat(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

GRITSERVE_LOOP int32_t FloatToBits(float f) {
  int32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// e^x within ~2 ulp, written so that loops calling it vectorize (libm's expf
// does not). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then Cephes'
// degree-6 polynomial for e^r, then n added to the exponent bits. Below -87
// (where e^x is a float denormal) it returns 0, as masked softmax entries need.
GRITSERVE_LOOP float Exp(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Round to nearest by the 1.5 * 2^23 trick: no libm call, vectorizes everywhere.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // |n| <= 127, so n * 2^23 fits in int32 and the exponent stays in range.
  const float scaled = BitsToFloat(FloatToBits(y) + static_cast<int32_t>(n) * (1 << 23));
  return x < -87.0f ? 0.0f : scaled;
}

GRITSERVE_LOOP void AddRmsNormRowsBody(float* x, const float* delta, const float* w, float* y,
                                       int64_t begin, int64_t end, int64_t h, float eps) {
  for (int64_t r = begin; r < end; ++r) {
    float* xr = x + r * h;
    float* yr = y + r * h;
    if (delta != nullptr) {
      const float* dr = delta + r * h;
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) xr[j] += dr[j];
    }
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < h; ++j) ss += xr[j] * xr[j];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) yr[j] = (xr[j] * inv) * w[j];
  }
}
GRITSERVE_ISA_VARIANTS(AddRmsNormRows,
                       (float* x, const float* delta, const float* w, float* y, int64_t begin,
                        int64_t end, int64_t h, float eps),
                       (x, delta, w, y, begin, end, h, eps))

// out[i] = x[i] cos[i] - x[i + half] sin[i];  out[i + half] = x[i + half] cos[i] + x[i] sin[i]
// (HF's x * cos + rotate_half(x) * sin with the duplicated halves of cos/sin), times scale.
GRITSERVE_LOOP void RotatePair(const float* x, float* out, const float* c, const float* s,
                               int64_t half, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    out[i] = (x1 * c[i] - x2 * s[i]) * scale;
    out[i + half] = (x2 * c[i] + x1 * s[i]) * scale;
  }
}

GRITSERVE_LOOP void RopeRowsBody(float* qkv, float* q, const float* cos, const float* sin,
                                 int64_t begin, int64_t end, int64_t t, int64_t hq, int64_t hkv,
                                 int64_t d, float q_scale) {
  const int64_t half = d / 2, width = (hq + 2 * hkv) * d;
  for (int64_t n = begin; n < end; ++n) {
    const int64_t bi = n / t, ti = n % t;
    const float* c = cos + n * half;
    const float* s = sin + n * half;
    float* row = qkv + n * width;
    for (int64_t h = 0; h < hq; ++h) {
      RotatePair(row + h * d, q + ((bi * hq + h) * t + ti) * d, c, s, half, q_scale);
    }
    // In place is safe: each pair is read before either half is written.
    for (int64_t h = 0; h < hkv; ++h) {
      float* k = row + (hq + h) * d;
      RotatePair(k, k, c, s, half, 1.0f);
    }
  }
}
GRITSERVE_ISA_VARIANTS(RopeRows,
                       (float* qkv, float* q, const float* cos, const float* sin, int64_t begin,
                        int64_t end, int64_t t, int64_t hq, int64_t hkv, int64_t d, float q_scale),
                       (qkv, q, cos, sin, begin, end, t, hq, hkv, d, q_scale))

// Rows are (layer, head, token), each D floats.
struct KvBlock {
  std::vector<const float*> k_src, v_src;
  std::vector<float*> k_dst, v_dst;
  int64_t heads = 0, tokens = 0, d = 0, head_stride = 0;
};

GRITSERVE_LOOP void PlaceRowsBody(const KvBlock& blk, const float* cos, const float* sin,
                                  int64_t begin, int64_t end) {
  const int64_t h = blk.heads, t = blk.tokens, d = blk.d;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t l = r / (h * t), hi = (r / t) % h, ti = r % t;
    const int64_t src = (hi * t + ti) * d, dst = hi * blk.head_stride + ti * d;
    RotatePair(blk.k_src[l] + src, blk.k_dst[l] + dst, cos, sin, d / 2, 1.0f);
    std::memcpy(blk.v_dst[l] + dst, blk.v_src[l] + src, d * sizeof(float));
  }
}
GRITSERVE_ISA_VARIANTS(PlaceRows,
                       (const KvBlock& blk, const float* cos, const float* sin, int64_t begin,
                        int64_t end),
                       (blk, cos, sin, begin, end))

GRITSERVE_LOOP void SiluMulRowsBody(const float* gu, float* out, int64_t begin, int64_t end,
                                    int64_t inter) {
  for (int64_t r = begin; r < end; ++r) {
    const float* g = gu + r * 2 * inter;
    const float* u = g + inter;
    float* o = out + r * inter;
#pragma omp simd
    for (int64_t j = 0; j < inter; ++j) o[j] = g[j] / (1.0f + Exp(-g[j])) * u[j];
  }
}
GRITSERVE_ISA_VARIANTS(SiluMulRows,
                       (const float* gu, float* out, int64_t begin, int64_t end, int64_t inter),
                       (gu, out, begin, end, inter))

// row = softmax(row) over s entries, in place.
GRITSERVE_LOOP void SoftmaxInPlace(float* __restrict row, int64_t s) {
  float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < s; ++j) mx = row[j] > mx ? row[j] : mx;
#pragma omp simd
  for (int64_t j = 0; j < s; ++j) row[j] = Exp(row[j] - mx);
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < s; ++j) sum += row[j];
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < s; ++j) row[j] *= inv;
}

GRITSERVE_LOOP void SoftmaxRowsBody(float* scores, const float* mask, int64_t begin, int64_t end,
                                    int64_t heads, int64_t t, int64_t s) {
  for (int64_t r = begin; r < end; ++r) {
    float* __restrict row = scores + r * s;
    const int64_t bi = r / (heads * t), ti = r % t;
    const float* __restrict m = mask + (bi * t + ti) * s;
    // Separate passes: a loop that both stores into and reduces over the row
    // does not vectorize.
#pragma omp simd
    for (int64_t j = 0; j < s; ++j) row[j] += m[j];
    SoftmaxInPlace(row, s);
  }
}
GRITSERVE_ISA_VARIANTS(SoftmaxRows,
                       (float* scores, const float* mask, int64_t begin, int64_t end, int64_t heads,
                        int64_t t, int64_t s),
                       (scores, mask, begin, end, heads, t, s))

// One KV head of a decode step: its G query rows against S keys (rows
// `k_row` and `v_row` floats apart), the scores in `p` [G, S] (scratch), then
// out [G, D] = softmax(p + mask) v. Keys and values are read once for all G
// rows while they sit in L1.
GRITSERVE_LOOP void DecodeHeadBody(const float* q, const float* k, const float* v, int64_t k_row,
                                   int64_t v_row, const float* mask, int64_t g, int64_t s,
                                   int64_t d, float* p, float* out) {
  for (int64_t j = 0; j < s; ++j) {
    const float* __restrict kj = k + j * k_row;
    for (int64_t gi = 0; gi < g; ++gi) {
      const float* __restrict qi = q + gi * d;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t e = 0; e < d; ++e) dot += qi[e] * kj[e];
      p[gi * s + j] = dot + mask[j];
    }
  }
  for (int64_t gi = 0; gi < g; ++gi) SoftmaxInPlace(p + gi * s, s);
  std::fill(out, out + g * d, 0.0f);
  for (int64_t j = 0; j < s; ++j) {
    const float* __restrict vj = v + j * v_row;
    for (int64_t gi = 0; gi < g; ++gi) {
      const float w = p[gi * s + j];
      float* __restrict o = out + gi * d;
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) o[e] += w * vj[e];
    }
  }
}
GRITSERVE_ISA_VARIANTS(DecodeHead,
                       (const float* q, const float* k, const float* v, int64_t k_row,
                        int64_t v_row, const float* mask, int64_t g, int64_t s, int64_t d, float* p,
                        float* out),
                       (q, k, v, k_row, v_row, mask, g, s, d, p, out))

GRITSERVE_LOOP void GemvRowsBody(const float* w, const float* x, float* y, int64_t begin,
                                 int64_t end, int64_t in) {
  int64_t r = begin;
  // Four rows per pass share each load of x.
  for (; r + 4 <= end; r += 4) {
    const float* w0 = w + r * in;
    const float* w1 = w0 + in;
    const float* w2 = w1 + in;
    const float* w3 = w2 + in;
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t k = 0; k < in; ++k) {
      a0 += w0[k] * x[k];
      a1 += w1[k] * x[k];
      a2 += w2[k] * x[k];
      a3 += w3[k] * x[k];
    }
    y[r] = a0, y[r + 1] = a1, y[r + 2] = a2, y[r + 3] = a3;
  }
  for (; r < end; ++r) {
    const float* wr = w + r * in;
    float a = 0;
#pragma omp simd reduction(+ : a)
    for (int64_t k = 0; k < in; ++k) a += wr[k] * x[k];
    y[r] = a;
  }
}
GRITSERVE_ISA_VARIANTS(GemvRows,
                       (const float* w, const float* x, float* y, int64_t begin, int64_t end,
                        int64_t in),
                       (w, x, y, begin, end, in))

GRITSERVE_LOOP float Bf16ToFloat(uint16_t v) {
  return BitsToFloat(static_cast<int32_t>(uint32_t{v} << 16));
}

// Rows [begin, end) of W against up to four rows of x at once: each pass over
// W serves all of them.
GRITSERVE_LOOP void Bf16WeightRowsBody(const uint16_t* w, const float* x, float* y, int64_t begin,
                                       int64_t end, int64_t in, int64_t out, int64_t m) {
  if (m == 1) {  // one row of x (decode, time to first token): four rows of W per pass
    int64_t r = begin;
    for (; r + 4 <= end; r += 4) {
      const uint16_t* w0 = w + r * in;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < in; ++k) {
        a0 += Bf16ToFloat(w0[k]) * x[k];
        a1 += Bf16ToFloat(w0[in + k]) * x[k];
        a2 += Bf16ToFloat(w0[2 * in + k]) * x[k];
        a3 += Bf16ToFloat(w0[3 * in + k]) * x[k];
      }
      y[r] = a0, y[r + 1] = a1, y[r + 2] = a2, y[r + 3] = a3;
    }
    for (; r < end; ++r) {
      float a = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t k = 0; k < in; ++k) a += Bf16ToFloat(w[r * in + k]) * x[k];
      y[r] = a;
    }
    return;
  }
  for (int64_t m0 = 0; m0 < m; m0 += 4) {
    const int64_t mc = std::min<int64_t>(4, m - m0);
    const float* x0 = x + m0 * in;
    // Rows past the end of x alias row 0; their sums are dropped.
    const float* x1 = mc > 1 ? x0 + in : x0;
    const float* x2 = mc > 2 ? x0 + 2 * in : x0;
    const float* x3 = mc > 3 ? x0 + 3 * in : x0;
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* wr = w + r * in;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t k = 0; k < in; ++k) {
        const float wk = Bf16ToFloat(wr[k]);
        a0 += wk * x0[k];
        a1 += wk * x1[k];
        a2 += wk * x2[k];
        a3 += wk * x3[k];
      }
      float* yr = y + m0 * out + r;
      yr[0] = a0;
      if (mc > 1) yr[out] = a1;
      if (mc > 2) yr[2 * out] = a2;
      if (mc > 3) yr[3 * out] = a3;
    }
  }
}
GRITSERVE_ISA_VARIANTS(Bf16WeightRows,
                       (const uint16_t* w, const float* x, float* y, int64_t begin, int64_t end,
                        int64_t in, int64_t out, int64_t m),
                       (w, x, y, begin, end, in, out, m))

#if defined(__x86_64__) && defined(__GNUC__)
#define GRITSERVE_BF16_GEMV_AVX512 1
// One row of x against bfloat16 rows [r, r + R) of W, for AVX-512 CPUs. A
// 32-bit lane of W holds two bfloat16 values, element 2i in its low half and
// 2i+1 in its high half: shifting the lane left by 16 gives element 2i as a
// float, masking off the low half gives 2i+1, with no shuffles across lanes.
// x comes split the same way (xe: even elements, xo: odd). The compiler's
// version of Bf16WeightRows widened through 256-bit halves and streamed ~24 GB/s
// of weights here, this one ~33 GB/s (LM head of the 0.5B shape: 10.6 -> 8.1 ms).
// R is a template argument so the accumulators stay in registers, and only a
// partial last vector uses masked loads: on the AMD cores measured, masked
// loads throughout ran the loop at two thirds of its speed.
//   w: [O, I] (I even); xe, xo: [I / 2]; y: [O]
template <int R>
__attribute__((target("avx512f"))) void Bf16RowsAvx512(const uint16_t* w, const float* xe,
                                                       const float* xo, float* y, int64_t r,
                                                       int64_t in) {
  const int64_t half = in / 2;
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  // Two chains per row (even, odd elements): one alone is bound by FMA latency.
  __m512 acc[R], odd[R];
  for (int i = 0; i < R; ++i) acc[i] = odd[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= half; k += 16) {
    const __m512 ve = _mm512_loadu_ps(xe + k);
    const __m512 vo = _mm512_loadu_ps(xo + k);
    for (int i = 0; i < R; ++i) {
      const __m512i wv = _mm512_loadu_si512(w + (r + i) * in + 2 * k);
      acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), ve, acc[i]);
      odd[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, high)), vo, odd[i]);
    }
  }
  for (int i = 0; i < R; ++i) acc[i] = _mm512_add_ps(acc[i], odd[i]);
  if (k < half) {  // a partial last vector
    const __mmask16 lanes = static_cast<__mmask16>((1u << (half - k)) - 1);
    const __m512 ve = _mm512_maskz_loadu_ps(lanes, xe + k);
    const __m512 vo = _mm512_maskz_loadu_ps(lanes, xo + k);
    for (int i = 0; i < R; ++i) {
      const __m512i wv = _mm512_maskz_loadu_epi32(lanes, w + (r + i) * in + 2 * k);
      acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), ve, acc[i]);
      acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, high)), vo, acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc[i]);
    float sum = 0;
    for (float v : lanes) sum += v;
    y[r + i] = sum;
  }
}

void Bf16RowsAvx512(const uint16_t* w, const float* xe, const float* xo, float* y, int64_t begin,
                    int64_t end, int64_t in) {
  int64_t r = begin;
  for (; r + 8 <= end; r += 8) Bf16RowsAvx512<8>(w, xe, xo, y, r, in);
  for (; r + 4 <= end; r += 4) Bf16RowsAvx512<4>(w, xe, xo, y, r, in);
  for (; r < end; ++r) Bf16RowsAvx512<1>(w, xe, xo, y, r, in);
}
#endif

void Require(bool ok, const char* what) {
  if (!ok) throw Error(ErrorKind::kInternal, std::string("cpu kernel: ") + what);
}

}  // namespace

bool HoldsBfloat16Values(const at::Tensor& t) {
  if (!Applies(t)) return false;
  const at::Tensor c = t.contiguous();
  const auto* bits = static_cast<const uint32_t*>(c.data_ptr());
  std::atomic<bool> exact{true};
  at::parallel_for(0, c.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    uint32_t low = 0;
    for (int64_t i = begin; i < end; ++i) low |= bits[i];
    if ((low & 0xFFFFu) != 0) exact = false;
  });
  return exact;
}

int Threads() {
  // One task per thread, each recording the pool slot that ran it.
  const int n = at::get_num_threads();
  std::vector<int> ran(static_cast<size_t>(n), 0);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ran[static_cast<size_t>(i)] = at::get_thread_num() + 1;
  });
  std::sort(ran.begin(), ran.end());
  return static_cast<int>(std::unique(ran.begin(), ran.end()) - ran.begin());
}

bool Applies(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat;
}

at::Tensor AddRmsNorm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                      float eps) {
  Require(Applies(x) && x.dim() == 2 && x.is_contiguous(), "AddRmsNorm: x");
  Require(
      !delta.defined() || (Applies(delta) && delta.sizes() == x.sizes() && delta.is_contiguous()),
      "AddRmsNorm: delta");
  const int64_t n = x.size(0), h = x.size(1);
  Require(Applies(weight) && weight.numel() == h && weight.is_contiguous(), "AddRmsNorm: weight");
  at::Tensor y = at::empty_like(x);  // [N, H]
  float* xp = x.data_ptr<float>();
  const float* dp = delta.defined() ? delta.data_ptr<float>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, RowGrain(h),
                   [&](int64_t b, int64_t e) { AddRmsNormRows(xp, dp, wp, yp, b, e, h, eps); });
  return y;
}

at::Tensor RopeQk(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t b,
                  int64_t hq, int64_t hkv, int64_t d, float q_scale) {
  Require(Applies(qkv) && qkv.dim() == 2 && qkv.is_contiguous() &&
              qkv.size(1) == (hq + 2 * hkv) * d && d % 2 == 0 && b > 0 && qkv.size(0) % b == 0,
          "RopeQk: qkv");
  const int64_t rows = qkv.size(0), t = rows / b;
  Require(Applies(cos) && Applies(sin) && cos.is_contiguous() && sin.is_contiguous() &&
              cos.numel() == rows * d / 2 && sin.numel() == rows * d / 2,
          "RopeQk: tables");
  at::Tensor q = at::empty({b, hq, t, d}, qkv.options());  // [B, Hq, T, D]
  float* qkvp = qkv.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  at::parallel_for(0, rows, RowGrain(qkv.size(1)), [&](int64_t begin, int64_t end) {
    RopeRows(qkvp, qp, cp, sp, begin, end, t, hq, hkv, d, q_scale);
  });
  return q;
}

at::Tensor SiluMul(const at::Tensor& gu) {
  Require(Applies(gu) && gu.dim() == 2 && gu.is_contiguous() && gu.size(1) % 2 == 0, "SiluMul: gu");
  const int64_t n = gu.size(0), inter = gu.size(1) / 2;
  at::Tensor out = at::empty({n, inter}, gu.options());  // [N, I]
  const float* gp = gu.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, RowGrain(2 * inter),
                   [&](int64_t b, int64_t e) { SiluMulRows(gp, op, b, e, inter); });
  return out;
}

void MaskedSoftmax(const at::Tensor& scores, const at::Tensor& mask) {
  Require(Applies(scores) && scores.dim() == 4 && scores.is_contiguous(), "MaskedSoftmax: scores");
  const int64_t b = scores.size(0), heads = scores.size(1), t = scores.size(2), s = scores.size(3);
  Require(Applies(mask) && mask.is_contiguous() && mask.numel() == b * t * s,
          "MaskedSoftmax: mask");
  float* sp = scores.data_ptr<float>();
  const float* mp = mask.data_ptr<float>();
  at::parallel_for(0, b * heads * t, RowGrain(s), [&](int64_t begin, int64_t end) {
    SoftmaxRows(sp, mp, begin, end, heads, t, s);
  });
}

at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask) {
  Require(Applies(q) && q.dim() == 4 && q.is_contiguous(), "DecodeAttention: q");
  const int64_t b = q.size(0), hkv = q.size(1), g = q.size(2), d = q.size(3), s = k.size(2);
  auto kv_ok = [&](const at::Tensor& t) {
    return Applies(t) && t.dim() == 4 && t.size(0) == b && t.size(1) == hkv && t.size(2) == s &&
           t.size(3) == d && t.stride(3) == 1;
  };
  Require(kv_ok(k) && kv_ok(v), "DecodeAttention: k, v");
  Require(Applies(mask) && mask.is_contiguous() && mask.numel() == b * s, "DecodeAttention: mask");
  at::Tensor out = at::empty({b, hkv * g * d}, q.options());  // [B, Hkv G D]
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const float* mp = mask.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // Heads split over threads only when each gets enough work to pay for the
  // fork and join (short contexts run on the calling thread).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(g * s * d, 1));
  at::parallel_for(0, b * hkv, grain, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;  // [G, S], kept between steps
    scores.resize(static_cast<size_t>(std::max<int64_t>(g * s, 1)));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bi = i / hkv, h = i % hkv;
      DecodeHead(qp + i * g * d, kp + bi * k.stride(0) + h * k.stride(1),
                 vp + bi * v.stride(0) + h * v.stride(1), k.stride(2), v.stride(2), mp + bi * s, g,
                 s, d, scores.data(), op + i * g * d);
    }
  });
  return out;
}

void PlaceKv(const std::vector<at::Tensor>& k_dst, const std::vector<at::Tensor>& k_src,
             const std::vector<at::Tensor>& v_dst, const std::vector<at::Tensor>& v_src,
             const at::Tensor& cos, const at::Tensor& sin) {
  const size_t layers = k_src.size();
  Require(layers > 0 && k_dst.size() == layers && v_src.size() == layers && v_dst.size() == layers,
          "PlaceKv: layer counts");
  KvBlock blk;
  blk.heads = k_src[0].size(0), blk.tokens = k_src[0].size(1), blk.d = k_src[0].size(2);
  blk.head_stride = k_dst[0].stride(0);
  Require(Applies(cos) && Applies(sin) && cos.is_contiguous() && sin.is_contiguous() &&
              cos.numel() == blk.d / 2 && sin.numel() == blk.d / 2,
          "PlaceKv: tables");
  auto src_ok = [&](const at::Tensor& t) {
    return Applies(t) && t.dim() == 3 && t.is_contiguous() && t.sizes() == k_src[0].sizes();
  };
  auto dst_ok = [&](const at::Tensor& t) {
    return Applies(t) && t.sizes() == k_src[0].sizes() && t.stride(2) == 1 &&
           t.stride(1) == blk.d && t.stride(0) == blk.head_stride;
  };
  for (size_t l = 0; l < layers; ++l) {
    Require(src_ok(k_src[l]) && src_ok(v_src[l]), "PlaceKv: sources");
    Require(dst_ok(k_dst[l]) && dst_ok(v_dst[l]), "PlaceKv: destinations");
    blk.k_src.push_back(k_src[l].data_ptr<float>());
    blk.v_src.push_back(v_src[l].data_ptr<float>());
    blk.k_dst.push_back(k_dst[l].data_ptr<float>());
    blk.v_dst.push_back(v_dst[l].data_ptr<float>());
  }
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t rows = static_cast<int64_t>(layers) * blk.heads * blk.tokens;
  at::parallel_for(0, rows, RowGrain(2 * blk.d),
                   [&](int64_t begin, int64_t end) { PlaceRows(blk, cp, sp, begin, end); });
}

at::Tensor Gemv(const at::Tensor& w, const at::Tensor& x) {
  Require(Applies(w) && w.dim() == 2 && w.is_contiguous(), "Gemv: w");
  Require(Applies(x) && x.numel() == w.size(1) && x.is_contiguous(), "Gemv: x");
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor y = at::empty({out}, x.options());  // [O]
  const float* wp = w.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  StreamRows(out, in * 4, [&](int64_t b, int64_t e) { GemvRows(wp, xp, yp, b, e, in); });
  return y;
}

at::Tensor MatmulBf16Weights(const at::Tensor& x, const at::Tensor& w) {
  Require(w.defined() && w.device().is_cpu() && w.scalar_type() == at::kBFloat16 && w.dim() == 2 &&
              w.is_contiguous(),
          "MatmulBf16Weights: w");
  Require(Applies(x) && x.dim() == 2 && x.size(1) == w.size(1) && x.is_contiguous(),
          "MatmulBf16Weights: x");
  const int64_t m = x.size(0), out = w.size(0), in = w.size(1);
  at::Tensor y = at::empty({m, out}, x.options());  // [M, O]
  if (m == 0) return y;
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#ifdef GRITSERVE_BF16_GEMV_AVX512
  if (m == 1 && in % 2 == 0 &&
      ActiveIsa() == Isa::kAvx512) {  // time to first token, decode: the one-row stream
    std::vector<float> split(static_cast<size_t>(in));  // [even elements | odd elements]
    for (int64_t i = 0; i < in / 2; ++i) {
      split[i] = xp[2 * i];
      split[in / 2 + i] = xp[2 * i + 1];
    }
    const float* xe = split.data();
    const float* xo = xe + in / 2;
    StreamRows(out, in * 2,
               [&](int64_t b, int64_t e) { Bf16RowsAvx512(wp, xe, xo, yp, b, e, in); });
    return y;
  }
#endif
  StreamRows(out, in * 2,
             [&](int64_t b, int64_t e) { Bf16WeightRows(wp, xp, yp, b, e, in, out, m); });
  return y;
}

}  // namespace gritserve::cpu_kernels
