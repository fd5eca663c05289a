#include "gritserve/kernels/cpu_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "gritserve/common/error.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/work_steal.h"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 flags the _mm512_undefined_* pass-through operands inside its own
// AVX-512 headers (max, min, conversions, reductions) once they are inlined.
#ifndef __clang__  // a GCC-only warning
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "avx512_tile.h"
#define GRITSERVE_CPU_ATTENTION 1
#endif

namespace gritserve::cpu_attention {
namespace {
constexpr int64_t kPanel =
    64;  // keys per packed K^T panel; output columns per tile (avx512_tile::kCols)
constexpr int64_t kMaxD = 256;
}  // namespace

#ifdef GRITSERVE_CPU_ATTENTION
namespace {

constexpr int64_t kChunk = 256;  // keys per online-softmax step: 4 panels
constexpr int64_t kRows = 32;    // query rows per work item

// e^x, the same reduction and polynomial as cpu_kernels' scalar Exp (so the
// two softmaxes agree to rounding); 0 below -87.
__attribute__((target("avx512f"))) inline __m512 ExpVec(__m512 x) {
  const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 big = _mm512_set1_ps(12582912.0f);
  const __m512 n =
      _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), big), big);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
  const __m512 scaled = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), e));
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(under, scaled, _mm512_setzero_ps());
}

inline __mmask16 Lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// Keys [p*64, p*64 + 64) of one KV head, transposed: kt[d][j] = k[p*64 + j][d],
// zero past the last key.
//   k: [S, D] at row stride ks; kt: [D][64]
void PackPanel(const float* k, int64_t ks, int64_t s, int64_t d, int64_t p, float* kt) {
  const int64_t j0 = p * kPanel, keys = std::min(kPanel, s - j0);
  for (int64_t j = 0; j < keys; ++j) {
    const float* row = k + (j0 + j) * ks;
    for (int64_t i = 0; i < d; ++i) kt[i * kPanel + j] = row[i];
  }
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t j = keys; j < kPanel; ++j) kt[i * kPanel + j] = 0.0f;
  }
}

struct Operands {
  const float* q;     // [B, Hkv, R, D]
  const float* kt;    // [B Hkv, panels, D, 64]
  const float* v;     // [B, Hkv, S, D] at strides vb, vh, vs
  const float* mask;  // [B, tn, S]: query tokens [t0, t0 + tn)
  float* out;         // [B T, Hkv G D]
  int64_t hkv, g, t, s, d, rows, panels, vb, vh, vs;
  int64_t t0, tn;
};

// Query rows [r0, r0 + rows) of KV head h in batch b.
__attribute__((target("avx512f"))) void Block(const Operands& o, int64_t b, int64_t h, int64_t r0,
                                              int64_t rows) {
  alignas(64) float sc[kRows * kChunk];  // [rows][chunk]: scores, then probabilities
  alignas(64) float acc[kRows * kMaxD];  // [rows][D]: unnormalised output
  float mx[kRows], sum[kRows];
  const int64_t d = o.d, bh = b * o.hkv + h;
  const float* q = o.q + (bh * o.rows + r0) * d;
  const float* v = o.v + b * o.vb + h * o.vh;
  std::fill(acc, acc + rows * d, 0.0f);
  std::fill(mx, mx + rows, -std::numeric_limits<float>::infinity());
  std::fill(sum, sum + rows, 0.0f);
  for (int64_t j0 = 0; j0 < o.s; j0 += kChunk) {
    const int64_t cn = std::min(kChunk, o.s - j0);
    for (int64_t pp = 0; pp * kPanel < cn; ++pp) {
      const float* kt = o.kt + ((bh * o.panels + j0 / kPanel + pp) * d) * kPanel;  // [D][64]
      avx512_tile::Rows(rows, q, d, kt, kPanel, d, sc + pp * kPanel, kChunk, false);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = r0 + r, ti = row % o.t;
      float* p = sc + r * kChunk;
      const float* m = o.mask + (b * o.tn + ti - o.t0) * o.s + j0;
      // Masked loads only for the last partial vector: on the AMD cores
      // measured, masked loads in a main loop ran it at three quarters speed.
      __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      int64_t j = 0;
      for (; j + 16 <= cn; j += 16) {
        const __m512 x = _mm512_add_ps(_mm512_loadu_ps(p + j), _mm512_loadu_ps(m + j));
        _mm512_storeu_ps(p + j, x);
        vmax = _mm512_max_ps(vmax, x);
      }
      if (j < cn) {
        const __mmask16 lanes = Lanes(cn - j);
        const __m512 x =
            _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, p + j), _mm512_maskz_loadu_ps(lanes, m + j));
        _mm512_mask_storeu_ps(p + j, lanes, x);
        vmax = _mm512_mask_max_ps(vmax, lanes, vmax, x);
      }
      const float new_max = std::max(mx[r], _mm512_reduce_max_ps(vmax));
      const __m512 nm = _mm512_set1_ps(new_max);
      __m512 vsum = _mm512_setzero_ps();
      for (j = 0; j + 16 <= cn; j += 16) {
        const __m512 e = ExpVec(_mm512_sub_ps(_mm512_loadu_ps(p + j), nm));
        _mm512_storeu_ps(p + j, e);
        vsum = _mm512_add_ps(vsum, e);
      }
      if (j < cn) {
        const __mmask16 lanes = Lanes(cn - j);
        const __m512 e = ExpVec(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, p + j), nm));
        _mm512_mask_storeu_ps(p + j, lanes, e);
        vsum = _mm512_mask_add_ps(vsum, lanes, vsum, e);
      }
      // The output so far was weighted against the old maximum.
      if (mx[r] != new_max) {
        const float alpha = std::isinf(mx[r]) ? 0.0f : std::exp(mx[r] - new_max);
        const __m512 va = _mm512_set1_ps(alpha);
        for (int64_t i = 0; i < d; i += 16) {
          _mm512_storeu_ps(acc + r * d + i, _mm512_mul_ps(_mm512_loadu_ps(acc + r * d + i), va));
        }
        sum[r] *= alpha;
        mx[r] = new_max;
      }
      sum[r] += _mm512_reduce_add_ps(vsum);
    }
    for (int64_t c = 0; c < d; c += kPanel) {
      avx512_tile::Rows(rows, sc, kChunk, v + j0 * o.vs + c, o.vs, cn, acc + c, d, true);
    }
  }
  const int64_t width = o.hkv * o.g * d;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r0 + r, gi = row / o.t, ti = row % o.t;
    float* dst = o.out + (b * o.t + ti) * width + (h * o.g + gi) * d;
    const __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
    for (int64_t i = 0; i < d; i += 16) {
      _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_loadu_ps(acc + r * d + i), inv));
    }
  }
}

}  // namespace

bool Available() { return kernels::Dispatch::Current().avx512; }

at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const MaskRows& mask_rows, int64_t block, int64_t g) {
  if (!Suits(q, k, v, g) || block < 1) {
    throw Error(ErrorKind::kInternal, "cpu_attention::Attend called outside its operands");
  }
  Operands o{};
  const int64_t b = q.size(0);
  o.hkv = q.size(1), o.rows = q.size(2), o.d = q.size(3), o.s = k.size(2), o.g = g;
  o.t = o.rows / g;
  o.panels = (o.s + kPanel - 1) / kPanel;
  o.vb = v.stride(0), o.vh = v.stride(1), o.vs = v.stride(2);
  at::Tensor kt = at::empty({b * o.hkv, o.panels, o.d, kPanel}, q.options());  // K^T panels
  at::Tensor out = at::empty({b * o.t, o.hkv * g * o.d}, q.options());         // [B T, Hq D]
  o.q = q.data_ptr<float>(), o.kt = kt.data_ptr<float>(), o.v = v.data_ptr<float>();
  o.out = out.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  float* ktp = kt.data_ptr<float>();
  const int64_t kb = k.stride(0), kh = k.stride(1), ks = k.stride(2);
  work_steal::ParallelFor(b * o.hkv * o.panels, [&](int64_t i, int64_t) {
    const int64_t bh = i / o.panels, p = i % o.panels;
    PackPanel(kp + (bh / o.hkv) * kb + (bh % o.hkv) * kh, ks, o.s, o.d, p,
              ktp + (bh * o.panels + p) * o.d * kPanel);
  });
  for (o.t0 = 0; o.t0 < o.t; o.t0 += block) {
    o.tn = std::min(block, o.t - o.t0);
    const at::Tensor mask = mask_rows(o.t0, o.tn);  // [B, tn, S]
    if (!mask.is_contiguous() || mask.scalar_type() != at::kFloat ||
        mask.sizes() != at::IntArrayRef{b, o.tn, o.s}) {
      throw Error(ErrorKind::kInternal, "cpu_attention::Attend: mask rows of the wrong shape");
    }
    o.mask = mask.data_ptr<float>();
    // Rows of one KV head that run: all G T of them for a single block (one
    // range), else each query head's tn rows of this block (G ranges).
    const bool whole = o.tn == o.t;
    const int64_t ranges = whole ? 1 : g, length = whole ? o.rows : o.tn;
    const int64_t blocks = (length + kRows - 1) / kRows;
    work_steal::ParallelFor(b * o.hkv * ranges * blocks, [&](int64_t i, int64_t) {
      const int64_t bh = i / (ranges * blocks), range = i / blocks % ranges, blk = i % blocks;
      // Even block sizes: 224 rows are 7 blocks of 32, 40 rows 2 of 20.
      const int64_t first = whole ? 0 : range * o.t + o.t0;
      const int64_t r0 = length * blk / blocks, r1 = length * (blk + 1) / blocks;
      Block(o, bh / o.hkv, bh % o.hkv, first + r0, r1 - r0);
    });
  }
  return out;
}

#else  // not x86-64 GCC/Clang

bool Available() { return false; }

at::Tensor Attend(const at::Tensor&, const at::Tensor&, const at::Tensor&, const MaskRows&, int64_t,
                  int64_t) {
  throw Error(ErrorKind::kInternal, "cpu_attention is not built for this CPU");
}

#endif

at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask, int64_t g) {
  if (!Suits(q, k, v, mask, g)) {
    throw Error(ErrorKind::kInternal, "cpu_attention::Attend called outside its operands");
  }
  const int64_t t = mask.size(1);
  return Attend(
      q, k, v, [&](int64_t t0, int64_t n) { return mask.narrow(1, t0, n).contiguous(); }, t, g);
}

bool Suits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t g) {
  auto cpu_f32 = [](const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat;
  };
  if (!kernels::CpuHasAvx512() || !cpu_f32(q) || !cpu_f32(k) || !cpu_f32(v)) return false;
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || g < 1) return false;
  const int64_t b = q.size(0), hkv = q.size(1), rows = q.size(2), d = q.size(3), s = k.size(2);
  return q.is_contiguous() && k.sizes() == v.sizes() && k.size(0) == b && k.size(1) == hkv &&
         k.size(3) == d && k.stride(3) == 1 && v.stride(3) == 1 && d % kPanel == 0 && d <= kMaxD &&
         rows > 0 && rows % g == 0 && s > 0 && s < (int64_t{1} << 31);
}

bool Suits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
           int64_t g) {
  return Suits(q, k, v, g) && mask.defined() && mask.device().is_cpu() &&
         mask.scalar_type() == at::kFloat && mask.dim() == 3 && mask.is_contiguous() &&
         mask.size(0) == q.size(0) && mask.size(1) == q.size(2) / g && mask.size(2) == k.size(2);
}

}  // namespace gritserve::cpu_attention
