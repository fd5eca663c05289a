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

#include "avx2_tile.h"
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

// The vector operations Block is written in, once per ISA (namespaces avx512
// and avx2 below), each function compiled for its ISA through GRITSERVE_ATTN.
namespace avx512 {
#define GRITSERVE_ATTN __attribute__((target("avx512f"), always_inline)) inline
using V = __m512;
constexpr int64_t kLanes = 16;
GRITSERVE_ATTN V Set(float x) { return _mm512_set1_ps(x); }
GRITSERVE_ATTN V Add(V a, V b) { return _mm512_add_ps(a, b); }
GRITSERVE_ATTN V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
GRITSERVE_ATTN V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
GRITSERVE_ATTN V Min(V a, V b) { return _mm512_min_ps(a, b); }
GRITSERVE_ATTN V Max(V a, V b) { return _mm512_max_ps(a, b); }
GRITSERVE_ATTN V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
GRITSERVE_ATTN V Fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
// y 2^n for whole-numbered n, through the exponent bits.
GRITSERVE_ATTN V ScaleByPow2(V y, V n) {
  const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), e));
}
// y, with 0 in the lanes where x < lo.
GRITSERVE_ATTN V ZeroWhereBelow(V y, V x, float lo) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, Set(lo), _CMP_LT_OQ), y, _mm512_setzero_ps());
}
GRITSERVE_ATTN V Load(const float* p) { return _mm512_loadu_ps(p); }
GRITSERVE_ATTN void Store(float* p, V x) { _mm512_storeu_ps(p, x); }
GRITSERVE_ATTN __mmask16 Part(int64_t left) { return static_cast<__mmask16>((1u << left) - 1); }
// The first `left` (< kLanes) values; the other lanes read as `fill`.
GRITSERVE_ATTN V LoadPart(const float* p, int64_t left, float fill) {
  return _mm512_mask_loadu_ps(Set(fill), Part(left), p);
}
GRITSERVE_ATTN void StorePart(float* p, int64_t left, V x) {
  _mm512_mask_storeu_ps(p, Part(left), x);
}
GRITSERVE_ATTN float ReduceMax(V x) { return _mm512_reduce_max_ps(x); }
GRITSERVE_ATTN float ReduceAdd(V x) { return _mm512_reduce_add_ps(x); }
inline void Rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kn,
                 float* c, int64_t ldc, bool accumulate) {
  avx512_tile::Rows(rows, a, lda, b, ldb, kn, c, ldc, accumulate);
}
#define GRITSERVE_ATTN_BLOCK __attribute__((target("avx512f")))
#include "cpu_attention_block.inc"
#undef GRITSERVE_ATTN_BLOCK
#undef GRITSERVE_ATTN
}  // namespace avx512

namespace avx2 {
#define GRITSERVE_ATTN __attribute__((target("avx2,fma"), always_inline)) inline
using V = __m256;
constexpr int64_t kLanes = 8;
GRITSERVE_ATTN V Set(float x) { return _mm256_set1_ps(x); }
GRITSERVE_ATTN V Add(V a, V b) { return _mm256_add_ps(a, b); }
GRITSERVE_ATTN V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
GRITSERVE_ATTN V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
GRITSERVE_ATTN V Min(V a, V b) { return _mm256_min_ps(a, b); }
GRITSERVE_ATTN V Max(V a, V b) { return _mm256_max_ps(a, b); }
GRITSERVE_ATTN V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
GRITSERVE_ATTN V Fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
GRITSERVE_ATTN V ScaleByPow2(V y, V n) {
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), e));
}
GRITSERVE_ATTN V ZeroWhereBelow(V y, V x, float lo) {
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, Set(lo), _CMP_LT_OQ));
}
GRITSERVE_ATTN V Load(const float* p) { return _mm256_loadu_ps(p); }
GRITSERVE_ATTN void Store(float* p, V x) { _mm256_storeu_ps(p, x); }
// All ones in lanes [0, left): AVX2's masked moves take a vector mask.
GRITSERVE_ATTN __m256i Part(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
GRITSERVE_ATTN V LoadPart(const float* p, int64_t left, float fill) {
  const __m256i lanes = Part(left);
  return _mm256_blendv_ps(Set(fill), _mm256_maskload_ps(p, lanes), _mm256_castsi256_ps(lanes));
}
GRITSERVE_ATTN void StorePart(float* p, int64_t left, V x) {
  _mm256_maskstore_ps(p, Part(left), x);
}
GRITSERVE_ATTN float ReduceMax(V x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
GRITSERVE_ATTN float ReduceAdd(V x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline void Rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t kn,
                 float* c, int64_t ldc, bool accumulate) {
  avx2_tile::Rows(rows, a, lda, b, ldb, kn, c, ldc, accumulate);
}
#define GRITSERVE_ATTN_BLOCK __attribute__((target("avx2,fma")))
#include "cpu_attention_block.inc"
#undef GRITSERVE_ATTN_BLOCK
#undef GRITSERVE_ATTN
}  // namespace avx2

}  // namespace

bool Available() { return kernels::ActiveIsa() != kernels::Isa::kBaseline; }

at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const MaskRows& mask_rows, int64_t block, int64_t g) {
  if (!Suits(q, k, v, g) || block < 1) {
    throw Error(ErrorKind::kInternal, "cpu_attention::Attend called outside its operands");
  }
  const bool avx512 = kernels::ActiveIsa() == kernels::Isa::kAvx512;
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
    const auto block_fn = avx512 ? &avx512::Block : &avx2::Block;
    const int64_t ranges = whole ? 1 : g, length = whole ? o.rows : o.tn;
    const int64_t blocks = (length + kRows - 1) / kRows;
    work_steal::ParallelFor(b * o.hkv * ranges * blocks, [&](int64_t i, int64_t) {
      const int64_t bh = i / (ranges * blocks), range = i / blocks % ranges, blk = i % blocks;
      // Even block sizes: 224 rows are 7 blocks of 32, 40 rows 2 of 20.
      const int64_t first = whole ? 0 : range * o.t + o.t0;
      const int64_t r0 = length * blk / blocks, r1 = length * (blk + 1) / blocks;
      block_fn(o, bh / o.hkv, bh % o.hkv, first + r0, r1 - r0);
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
  if (!Available() || !cpu_f32(q) || !cpu_f32(k) || !cpu_f32(v)) return false;
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
