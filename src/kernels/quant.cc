#include "gritserve/kernels/quant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gritserve/common/error.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/host_memory.h"
#include "gritserve/kernels/small_gemm.h"
#include "gritserve/kernels/work_steal.h"
#include "quant_internal.h"

namespace gritserve::quant {

using detail::Acts;
using detail::kPair;
using detail::PairPosition;

namespace {

// Up to this many activation rows the int8 row kernels win: they stream the
// weights once at their packed size, while the float32 panels first write a
// bfloat16 copy of every block; past it the panels' float32 arithmetic
// (without per-block scaling) wins (bench_quant_kernels).
constexpr int64_t kMaxInt8Rows = 48;

float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint32_t FloatToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

float Bf16ToFloat(uint16_t v) { return BitsToFloat(uint32_t{v} << 16); }
float ToFloat(float v) { return v; }
float ToFloat(uint16_t bf16) { return Bf16ToFloat(bf16); }

uint16_t FloatToBf16(float f) {  // round to nearest even; values here are finite
  const uint32_t bits = FloatToBits(f);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// One block's codes from its values, and its stored scale and minimum.
struct BlockCodes {
  uint8_t code[kBlock];
  uint16_t scale, min;
};

// v: the block's first n values (n >= 1); the codes past them (padding) are
// never multiplied by anything but zero, and do not widen the range.
BlockCodes QuantizeBlock(const float* v, int n, Format format) {
  BlockCodes out{};
  if (format == Format::kQ8) {
    float amax = 0;
    for (int e = 0; e < n; ++e) amax = std::max(amax, std::fabs(v[e]));
    out.scale = FloatToHalf(amax / 127.0f);
    const float d = HalfToFloat(out.scale);
    // The half-precision scale is within 2^-11 of amax / 127, so no code
    // strays past 127.06: rounding alone keeps them in range, the clamp is a guard.
    for (int e = 0; e < kBlock; ++e) {
      const float q = d > 0 ? std::nearbyint(v[e] / d) : 0.0f;
      out.code[e] = static_cast<uint8_t>(std::clamp(q, -127.0f, 127.0f) + 128.0f);
    }
    out.min = FloatToHalf(-128.0f * d);
    return out;
  }
  float lo = v[0], hi = v[0];
  for (int e = 1; e < n; ++e) lo = std::min(lo, v[e]), hi = std::max(hi, v[e]);
  out.min = FloatToHalf(lo);
  const float m = HalfToFloat(out.min);
  out.scale = FloatToHalf(std::max(0.0f, hi - m) / 15.0f);
  const float d = HalfToFloat(out.scale);
  for (int e = 0; e < kBlock; ++e) {
    const float q = d > 0 ? std::nearbyint((v[e] - m) / d) : 0.0f;
    out.code[e] = static_cast<uint8_t>(std::clamp(q, 0.0f, 15.0f));
  }
  return out;
}

// Largest magnitude whose block scale and minimum fit in half precision.
constexpr float kMaxWeight = 65504.0f;

template <typename T>
bool QuantizeRow(const T* w, int64_t cols, Format format, int64_t pairs, uint8_t* codes,
                 uint16_t* scales, uint16_t* mins) {
  for (int64_t b = 0; b < 2 * pairs; ++b) {
    float v[kBlock];
    bool ok = true;
    for (int e = 0; e < kBlock; ++e) {
      const int64_t k = b * kBlock + e;
      v[e] = k < cols ? ToFloat(w[k]) : 0.0f;  // padding quantizes as zero
      ok = ok && std::isfinite(v[e]) && std::fabs(v[e]) <= kMaxWeight;
    }
    // The caller refuses the matrix; a NaN or infinity must not even reach the
    // float-to-code conversion, which is undefined for them.
    if (!ok) return false;
    const int n = static_cast<int>(std::clamp<int64_t>(cols - b * kBlock, 1, kBlock));
    const BlockCodes q = QuantizeBlock(v, n, format);
    const int64_t i = b / 2;
    const int half = static_cast<int>(b % 2);
    for (int e = 0; e < kBlock; ++e) {
      const int p = PairPosition(half, e);
      if (format == Format::kQ8) {
        codes[i * kPair + p] = q.code[e];
      } else {  // byte j of a pair: low nibble position j, high nibble position 32 + j
        codes[i * kBlock + p % kBlock] |= static_cast<uint8_t>(q.code[e] << (p < kBlock ? 0 : 4));
      }
    }
    scales[b] = q.scale;
    if (mins != nullptr) mins[b] = q.min;
  }
  return true;
}

// x rounded to the nearest integer, ties to even, as std::nearbyint in the
// default rounding mode, for |x| <= 2^22 (codes here stay within +-127.01):
// adding 1.5 * 2^23 leaves no fraction bits. Unlike the libm call (one per
// value, through the PLT) it vectorizes.
inline float RoundToEven(float x) { return (x + 12582912.0f) - 12582912.0f; }

// One activation row's blocks to int8 codes (interleaved per pair like the
// weights'), each block's scale for the row kernels, and scale * sum of codes.
// Runs on the calling thread before every product of a decode step, so its
// loops are left to the vectorizer.
void QuantizeActRow(const float* x, int64_t cols, int64_t pairs, int8_t* qj, float* sxj,
                    float* xcj) {
  for (int64_t b = 0; b < 2 * pairs; ++b) {
    const int64_t k0 = b * kBlock, n = std::clamp<int64_t>(cols - k0, 0, kBlock);
    float padded[kBlock];  // a short last block, zeros after its values
    const float* v = x + k0;
    if (n < kBlock) {
      std::fill(std::copy(v, v + n, padded), padded + kBlock, 0.0f);
      v = padded;
    }
    float amax = 0;
#pragma omp simd reduction(max : amax)
    for (int e = 0; e < kBlock; ++e) amax = std::max(amax, std::fabs(v[e]));
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    int8_t codes[kBlock];
    int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int e = 0; e < kBlock; ++e) {
      codes[e] = static_cast<int8_t>(std::clamp(RoundToEven(v[e] * inv), -127.0f, 127.0f));
      sum += codes[e];
    }
    // Four codes at a time to their places in the pair (PairPosition).
    int8_t* pair = qj + (b / 2) * kPair;
    for (int e = 0; e < kBlock; e += 4) {
      std::memcpy(pair + PairPosition(static_cast<int>(b % 2), e), codes + e, 4);
    }
    const float scale = amax / 127.0f;
    for (int l = static_cast<int>(b % 2); l < 16; l += 2) sxj[(b / 2) * 16 + l] = scale;
    xcj[b] = scale * static_cast<float>(sum);
  }
}

// Quantizes m rows of activations per block, into buffers reused across calls
// (one inference thread; no allocation once they have grown).
Acts QuantizeActs(const float* a, int64_t m, int64_t cols, int64_t pairs) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> sx, xc;
  Acts acts;
  acts.kp = pairs * kPair;
  acts.sx_stride = pairs * 16;
  acts.xc_stride = (2 * pairs + 15) / 16 * 16;
  // 64 bytes of slack: the codes are read in aligned 64-byte vectors.
  q.resize(static_cast<size_t>(m * acts.kp + 64));
  sx.resize(static_cast<size_t>(m * acts.sx_stride));
  xc.resize(static_cast<size_t>(m * acts.xc_stride));
  int8_t* q0 = q.data() + (64 - reinterpret_cast<uintptr_t>(q.data()) % 64) % 64;
  for (int64_t j = 0; j < m; ++j) {
    float* xcj = xc.data() + j * acts.xc_stride;
    std::fill(xcj, xcj + acts.xc_stride, 0.0f);
    QuantizeActRow(a + j * cols, cols, pairs, q0 + j * acts.kp, sx.data() + j * acts.sx_stride,
                   xcj);
  }
  acts.q = q0;
  acts.sx = sx.data();
  acts.xc = xc.data();
  return acts;
}

detail::RowsKernel RowsFor(Isa isa) {
  if (!IsaAvailable(isa)) {
    throw Error(ErrorKind::kInternal,
                std::string("quant: ") + kernels::IsaName(isa) + " not on this CPU");
  }
#ifdef GRITSERVE_QUANT_X86
  if (isa == Isa::kAvx512) return detail::RowsAvx512Vnni;
  if (isa == Isa::kAvx2) {
    return kernels::AvxVnniActive() ? detail::RowsAvxVnni : detail::RowsAvx2;
  }
#endif
  return detail::RowsScalar;
}

void MultiplyInt8Rows(const Matrix& w, const float* a, int64_t m, const float* bias, float* c,
                      Isa isa) {
  const detail::RowsKernel kernel = RowsFor(isa);
  const Acts acts = QuantizeActs(a, m, w.cols(), w.pairs());
  // Items of about 64 KB of weights (a multiple of 4 rows, the kernels' tile):
  // enough of them for the two threads to balance, each a long sequential stream.
  const int64_t rows = std::max<int64_t>(4, (int64_t{64} << 10) / w.stride() / 4 * 4);
  const int64_t items = (w.rows() + rows - 1) / rows;
  work_steal::ParallelFor(items, [&](int64_t item, int64_t) {
    kernel(w, acts, m, item * rows, std::min(w.rows(), (item + 1) * rows), bias, c);
  });
}

// Rows [n0, n0 + nc) of W as small_gemm's bfloat16 panels (columns past nc
// zero). Called on AVX-512 VNNI or AVX2 CPUs only, per `isa`.
void DequantizeBf16Panels(const Matrix& w, int64_t n0, int64_t nc, uint16_t* dst, Isa isa) {
  const int64_t k = w.cols(), panels = (nc + 63) / 64;
  work_steal::ParallelFor(panels, [&](int64_t p, int64_t) {
    uint16_t* panel = dst + p * k * 64;
    const int64_t rows = std::min<int64_t>(64, nc - p * 64);
#ifdef GRITSERVE_QUANT_X86
    if (isa == Isa::kAvx512) {
      detail::DequantizePanelAvx512(w, n0 + p * 64, rows, panel);
      return;
    }
    if (isa == Isa::kAvx2) {
      detail::DequantizePanelAvx2(w, n0 + p * 64, rows, panel);
      return;
    }
#endif
    thread_local std::vector<float> row;
    thread_local std::vector<uint16_t> bits;
    row.resize(static_cast<size_t>(k));
    bits.resize(static_cast<size_t>(k));
    for (int64_t j = 0; j < 64; ++j) {
      if (j < rows) {
        w.DequantizeRow(n0 + p * 64 + j, row.data());
        for (int64_t kk = 0; kk < k; ++kk) bits[kk] = FloatToBf16(row[kk]);
      } else {
        std::fill(bits.begin(), bits.end(), uint16_t{0});
      }
      // small_gemm::PackBf16's slot for column j of a panel row.
      const int64_t slot = 32 * (j / 32) + 2 * (j % 16) + (j % 32) / 16;
      for (int64_t kk = 0; kk < k; ++kk) panel[kk * 64 + slot] = bits[kk];
    }
  });
}

void MultiplyFloatPanels(const Matrix& w, const float* a, int64_t m, const float* bias, float* c,
                         Isa isa) {
  const int64_t n = w.rows(), k = w.cols(), chunk = ChunkRows(w);
  // small_gemm's bfloat16 panels on either vector ISA; the portable path
  // multiplies a float32 copy with LibTorch.
  const bool panels = isa != Isa::kBaseline;
  if (panels && !IsaAvailable(isa)) RowsFor(isa);  // throws: not on this CPU
  thread_local std::vector<uint16_t> bf16;
  thread_local std::vector<float> f32;
  std::vector<float> out;  // [m, nc] when W comes in several chunks
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t nc = std::min(chunk, n - n0);
    float* dst = nc == n ? c : (out.resize(static_cast<size_t>(m * nc)), out.data());
    const float* b = bias == nullptr ? nullptr : bias + n0;
    if (panels) {
      bf16.resize(static_cast<size_t>(small_gemm::Bf16PanelElements(k, nc)));
      DequantizeBf16Panels(w, n0, nc, bf16.data(), isa);
      small_gemm::RunBf16(a, m, k, bf16.data(), nc, b, dst, isa);
    } else {
      f32.resize(static_cast<size_t>(nc * k));
      float* deq = f32.data();  // taken here: the workers have thread_locals of their own
      work_steal::ParallelFor(nc,
                              [&](int64_t r, int64_t) { w.DequantizeRow(n0 + r, deq + r * k); });
      const at::Tensor x = at::from_blob(const_cast<float*>(a), {m, k});  // [M, K]
      const at::Tensor wt = at::from_blob(deq, {nc, k});                  // [Nc, K]
      at::Tensor y = at::from_blob(dst, {m, nc});                         // [M, Nc]
      if (b != nullptr) {
        at::addmm_out(y, at::from_blob(const_cast<float*>(b), {nc}), x, wt.t());
      } else {
        at::mm_out(y, x, wt.t());
      }
    }
    if (dst != c) {
      for (int64_t i = 0; i < m; ++i) std::memcpy(c + i * n + n0, dst + i * nc, nc * sizeof(float));
    }
  }
}

}  // namespace

int64_t ChunkRows(const Matrix& w) {
  const int64_t rows = std::max<int64_t>(64, (int64_t{32} << 20) / w.cols() / 64 * 64);
  return std::min(rows, (w.rows() + 63) / 64 * 64);
}

uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatToBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u)
    return static_cast<uint16_t>(sign | (ax > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (ax < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    return static_cast<uint16_t>(
        sign | static_cast<uint32_t>(std::nearbyint(BitsToFloat(ax) * 16777216.0f)));
  }
  uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7FFFFFu) >> 13));
  const uint32_t rest = ax & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves the exponent up
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (uint32_t{h} & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return BitsToFloat(sign | 0x7F800000u | (mant << 13));
  return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

const char* FormatName(Format f) { return f == Format::kQ8 ? "q8" : "q4"; }

bool IsaAvailable(Isa isa) {
  return isa == Isa::kAvx512 ? kernels::CpuHasAvx512Vnni() && kernels::CpuHas(Isa::kAvx512)
                             : kernels::CpuHas(isa);
}

Isa DispatchedIsa() {
  const Isa allowed = kernels::Dispatch::Current().isa;
  if (allowed == Isa::kAvx512 && IsaAvailable(Isa::kAvx512)) return Isa::kAvx512;
  return allowed == Isa::kBaseline ? Isa::kBaseline : Isa::kAvx2;
}

const char* Int8RowsName(Isa isa) {
  return isa == Isa::kAvx2 && kernels::AvxVnniActive() ? "avx2-vnni" : kernels::IsaName(isa);
}

Path PathFor(int64_t rows) { return rows <= kMaxInt8Rows ? Path::kInt8Rows : Path::kFloatPanels; }

template <typename T>
Matrix Matrix::Build(const T* w, int64_t rows, int64_t cols, Format format) {
  if (rows < 1 || cols < 1) throw Error(ErrorKind::kInternal, "quant: empty matrix");
  Matrix m;
  m.rows_ = rows, m.cols_ = cols, m.format_ = format;
  const int64_t pairs = m.pairs();
  m.code_bytes_ = pairs * (format == Format::kQ8 ? kPair : kPair / 2);
  const int64_t scale_bytes = 2 * pairs * 2 * (format == Format::kQ8 ? 1 : 2);
  m.stride_ = (m.code_bytes_ + scale_bytes + 63) / 64 * 64;
  at::Tensor storage = StreamedWeightEmpty({rows * m.stride_}, at::kByte);
  m.data_ = std::shared_ptr<uint8_t>(storage.data_ptr<uint8_t>(),
                                     [storage](uint8_t*) mutable { storage = at::Tensor(); });
  std::memset(storage.data_ptr(), 0, static_cast<size_t>(rows * m.stride_));
  std::atomic<bool> ok{true};
  constexpr int64_t kRowsPerItem = 16;
  work_steal::ParallelFor((rows + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item, int64_t) {
    for (int64_t r = item * kRowsPerItem; r < std::min(rows, (item + 1) * kRowsPerItem); ++r) {
      uint8_t* row = m.data_.get() + r * m.stride_;
      auto* scales = reinterpret_cast<uint16_t*>(row + m.code_bytes_);
      if (!QuantizeRow(w + r * cols, cols, format, pairs, row, scales,
                       format == Format::kQ4 ? scales + 2 * pairs : nullptr)) {
        ok = false;
      }
    }
  });
  if (!ok) {
    throw LoadError(std::string("cannot quantize to ") + FormatName(format) +
                    ": a weight is not finite or exceeds 65504 in magnitude");
  }
  return m;
}

Matrix Matrix::Quantize(const float* w, int64_t rows, int64_t cols, Format format) {
  return Build(w, rows, cols, format);
}

Matrix Matrix::QuantizeBf16(const uint16_t* w, int64_t rows, int64_t cols, Format format) {
  return Build(w, rows, cols, format);
}

float Matrix::Scale(int64_t r, int64_t b) const { return HalfToFloat(scales(r)[b]); }

float Matrix::Min(int64_t r, int64_t b) const {
  return format_ == Format::kQ8 ? -128.0f * Scale(r, b) : HalfToFloat(mins(r)[b]);
}

void Matrix::DequantizeRow(int64_t r, float* out) const {
  const uint8_t* codes = row(r);
  for (int64_t b = 0; b < (cols_ + kBlock - 1) / kBlock; ++b) {
    const float d = Scale(r, b), m = Min(r, b);
    const int64_t i = b / 2;
    for (int e = 0; e < kBlock && b * kBlock + e < cols_; ++e) {
      const int p = PairPosition(static_cast<int>(b % 2), e);
      const int code = format_ == Format::kQ8
                           ? codes[i * kPair + p]
                           : (codes[i * kBlock + p % kBlock] >> (p < kBlock ? 0 : 4)) & 0xF;
      out[b * kBlock + e] = d * static_cast<float>(code) + m;
    }
  }
}

void Multiply(const Matrix& w, const float* a, int64_t m, const float* bias, float* c, Isa isa) {
  Multiply(w, a, m, bias, c, isa, PathFor(m));
}

void DequantizeBf16Rows(const Matrix& w, int64_t r0, int64_t n, uint16_t* dst, Isa isa) {
  if (r0 < 0 || n < 0 || r0 + n > w.rows()) {
    throw Error(ErrorKind::kInternal, "quant::DequantizeBf16Rows: rows out of range");
  }
  if (isa == Isa::kAvx512 && !IsaAvailable(isa)) RowsFor(isa);  // throws: not on this CPU
  const int64_t k = w.cols();
  // Pieces of 16 rows: enough of them to balance two threads.
  work_steal::ParallelFor((n + 15) / 16, [&](int64_t p, int64_t) {
    thread_local std::vector<float> row;
    row.resize(static_cast<size_t>(k));
    for (int64_t j = p * 16; j < std::min(n, p * 16 + 16); ++j) {
      uint16_t* out = dst + j * k;
#ifdef GRITSERVE_QUANT_X86
      if (isa == Isa::kAvx512) {
        detail::DequantizeRowBf16Avx512(w, r0 + j, out);
        continue;
      }
#endif
      w.DequantizeRow(r0 + j, row.data());
      for (int64_t kk = 0; kk < k; ++kk) out[kk] = FloatToBf16(row[kk]);
    }
  });
}

void Multiply(const Matrix& w, const float* a, int64_t m, const float* bias, float* c, Isa isa,
              Path path) {
  if (!w.defined()) throw Error(ErrorKind::kInternal, "quant: product with an empty matrix");
  if (m <= 0) return;
  if (path == Path::kInt8Rows) {
    MultiplyInt8Rows(w, a, m, bias, c, isa);
  } else {
    MultiplyFloatPanels(w, a, m, bias, c, isa);
  }
}

namespace detail {

void RowsScalar(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                const float* bias, float* c) {
  const int64_t pairs = w.pairs(), n = w.rows();
  const bool q4 = w.format() == Format::kQ4;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* codes = w.row(r);
    for (int64_t j = 0; j < m; ++j) {
      const int8_t* xq = x.q + j * x.kp;
      const float* sx = x.sx + j * x.sx_stride;
      const float* xc = x.xc + j * x.xc_stride;
      float y = 0;
      for (int64_t i = 0; i < pairs; ++i) {
        int32_t dot[2] = {0, 0};
        for (int p = 0; p < kPair; ++p) {
          const int code = q4 ? (codes[i * kBlock + p % kBlock] >> (p < kBlock ? 0 : 4)) & 0xF
                              : codes[i * kPair + p];
          dot[(p / 4) % 2] += code * xq[i * kPair + p];
        }
        for (int h = 0; h < 2; ++h) {
          const int64_t b = 2 * i + h;
          y += sx[i * 16 + h] * w.Scale(r, b) * static_cast<float>(dot[h]) + w.Min(r, b) * xc[b];
        }
      }
      c[j * n + r] = y + (bias != nullptr ? bias[r] : 0.0f);
    }
  }
}

}  // namespace detail
}  // namespace gritserve::quant
