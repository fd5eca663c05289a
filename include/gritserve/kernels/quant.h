// Weight matrices quantized at load in blocks of 32 values along the input
// axis, each block with its own scale, and their products with float32
// activations.
//
//   q8: symmetric int8, w = d (c - 128), d = max|w| / 127 (like llama.cpp's
//       Q8_0): 8.5 bits per weight.
//   q4: 4-bit with a scale and a minimum, w = d c + m, c in 0..15 (like
//       Q4_1): 5 bits per weight. The minimum costs half a bit per weight
//       over a symmetric format and lets the 16 levels span each block's own
//       range, which matters at 4 bits; the kernels pay nothing for it, since
//       they need a per-block activation sum for the unsigned codes anyway.
// d and m are stored in IEEE half precision.
//
// One row of W is its codes for every block, then the blocks' scales (and,
// for q4, minimums). Blocks go in pairs of 64 values whose codes are
// interleaved four at a time (4 of block 0, 4 of block 1, ...): a 32-bit lane
// of a vector product then covers one block, and the lanes' scales come from
// one 32-bit broadcast of the pair's two half-precision scales.
//
// Products, by row count of the activations:
//  - a few rows (decode, batched decode): each activation row is quantized
//    per 32-block to int8 with a float scale and multiplied block by block in
//    integers (VNNI's vpdpbusd on AVX-512 and on AVX2 CPUs with AVX-VNNI,
//    maddubs on other AVX2 CPUs, plain loops in the portable path); the
//    weights stream once at their packed size.
//  - many rows (prompts, embedding batches): blocks of the weights are
//    dequantized into the panel layout of the float32 product kernel
//    (small_gemm's bfloat16 panels on AVX-512 and AVX2, plain float32 for
//    LibTorch's product in the portable path) and the activations stay in
//    float32. Where the layer was built for native bfloat16 products (see
//    Linear), chunks of rows are dequantized to bfloat16 instead
//    (DequantizeBf16Rows) for oneDNN's bfloat16 matmul.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "gritserve/kernels/dispatch.h"

namespace gritserve::quant {

constexpr int64_t kBlock = 32;

enum class Format { kQ8, kQ4 };

// Kernel families are kernels::Isa's: kBaseline (portable C++), kAvx2 (AVX2 +
// FMA + F16C; its int8 products take AVX-VNNI's vpdpbusd where
// kernels::AvxVnniActive()) and kAvx512 (AVX-512 F/BW/VL + VNNI, with the
// AVX-512 panel kernel). Each is chosen at load from kernels::Dispatch; tests
// name them.
using kernels::Isa;

// How a product runs (see above); chosen by row count, or named by tests.
enum class Path {
  kInt8Rows,     // activations quantized per block to int8
  kFloatPanels,  // weights dequantized per panel, float32 activations
};

const char* FormatName(Format f);  // "q8", "q4"
// Whether this CPU and build can run `isa` (GRITSERVE_CPU_ISA aside): as
// kernels::CpuHas, and VNNI for kAvx512.
bool IsaAvailable(Isa isa);
// The widest family kernels::Dispatch::Current() allows (GRITSERVE_CPU_ISA=avx2
// stops at kAvx2; an AVX-512 CPU without VNNI runs kAvx2).
Isa DispatchedIsa();
// The int8 rows kernel `isa` runs now, for logs and benchmarks: IsaName's,
// or "avx2-vnni".
const char* Int8RowsName(Isa isa);
// The path Multiply takes for `rows` activation rows.
Path PathFor(int64_t rows);

// A quantized [rows, cols] matrix (HF's [out, in]), immutable once built.
class Matrix {
 public:
  Matrix() = default;
  // w: [rows, cols] row-major, float32 or bfloat16 bits. Weights that are not
  // finite are refused (Error kLoad).
  static Matrix Quantize(const float* w, int64_t rows, int64_t cols, Format format);
  static Matrix QuantizeBf16(const uint16_t* w, int64_t rows, int64_t cols, Format format);

  bool defined() const { return data_ != nullptr; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  Format format() const { return format_; }
  int64_t bytes() const { return rows_ * stride_; }

  // Row r's values as the kernels see them.  out: [cols]
  void DequantizeRow(int64_t r, float* out) const;
  // Block b of row r: value = scale * code + min (q8: min = -128 scale).
  float Scale(int64_t r, int64_t b) const;
  float Min(int64_t r, int64_t b) const;

  // Layout, for the kernels.
  int64_t pairs() const { return (cols_ + 2 * kBlock - 1) / (2 * kBlock); }
  int64_t stride() const { return stride_; }          // bytes per row
  int64_t code_bytes() const { return code_bytes_; }  // codes per row, in bytes
  const uint8_t* row(int64_t r) const { return data_.get() + r * stride_; }
  // The row's half-precision scales (then, for q4, its minimums), 2 per pair.
  const uint16_t* scales(int64_t r) const {
    return reinterpret_cast<const uint16_t*>(row(r) + code_bytes_);
  }
  const uint16_t* mins(int64_t r) const { return scales(r) + 2 * pairs(); }

 private:
  template <typename T>
  static Matrix Build(const T* w, int64_t rows, int64_t cols, Format format);

  int64_t rows_ = 0, cols_ = 0, stride_ = 0, code_bytes_ = 0;
  Format format_ = Format::kQ8;
  std::shared_ptr<uint8_t> data_;  // rows_ * stride_ bytes, 64-byte aligned
};

// c = a W^T + bias, the path chosen by row count on `isa`.
//   a: [m, cols] row-major float32; bias: [rows] or null; c: [m, rows] row-major
void Multiply(const Matrix& w, const float* a, int64_t m, const float* bias, float* c, Isa isa);
// The same on a named path (tests; both paths run at any row count).
void Multiply(const Matrix& w, const float* a, int64_t m, const float* bias, float* c, Isa isa,
              Path path);

// Rows [r0, r0 + n) of W as bfloat16 (each value rounded to nearest even),
// for a product in native bfloat16 (Linear, with bfloat16 products): the
// AVX-512 copy on kAvx512, else portable C++.  dst: [n, cols] row-major
void DequantizeBf16Rows(const Matrix& w, int64_t r0, int64_t n, uint16_t* dst, Isa isa);
// Weight rows a product dequantizes at a time (a multiple of 64): about 32M
// values, 64 MB in bfloat16, which holds every matrix of the 0.5B shape but
// its LM head whole, and bounds the buffer on any shape.
int64_t ChunkRows(const Matrix& w);

// Half precision <-> float32 (round to nearest even), for the layouts and tests.
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);

}  // namespace gritserve::quant
