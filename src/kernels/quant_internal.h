// What quant.cc shares with the per-ISA kernel files: quantized activations
// and the row kernels' signature.
#pragma once

#include <cstdint>

#include "gritserve/kernels/quant.h"

namespace gritserve::quant::detail {

constexpr int64_t kPair = 2 * kBlock;  // values per interleaved pair of blocks

// The row kernels ask for the codes of the next tile's rows (R rows on, at
// the position they read now) while they multiply this tile's: with the
// hardware prefetcher alone the weights streamed well short of the memory's
// bandwidth (bench_engine: one sequence, eight together, the 0.5B and 7B
// shapes). A fixed distance within the row did as well only where it
// happened to match a tile's span (4 KB and the 0.5B shape's 960-byte rows).
// Prefetches never fault, so running past a matrix's end is harmless.
inline void PrefetchNextTile(const uint8_t* codes, int64_t tile_bytes) {
  __builtin_prefetch(codes + tile_bytes, 0, 3);
}

// Where element e of block `half` (0, 1) of a pair sits among the pair's 64
// codes: four at a time, alternating between the two blocks.
constexpr int PairPosition(int half, int e) { return ((e / 4) * 2 + half) * 4 + e % 4; }

// m activation rows quantized per 32-block to int8 (codes in [-127, 127],
// interleaved like the weights' codes), for the int8 row kernels.
struct Acts {
  const int8_t* q;  // [m][kp]
  const float* sx;  // [m][pairs * 16]: lane l of pair i holds block 2i + l % 2's scale
  const float* xc;  // [m][xc_stride]: per block, scale * sum of its codes; zero past the end
  int64_t kp = 0;   // pairs * 64
  int64_t sx_stride = 0;
  int64_t xc_stride = 0;  // 2 * pairs rounded up to 16
};

// c[j][r] = sum over blocks of (row r of W) . (row j of the activations),
// plus bias[r] (when given), for r in [r0, r1) and j < m. c: rows at stride w.rows().
using RowsKernel = void (*)(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                            const float* bias, float* c);

void RowsScalar(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                const float* bias, float* c);
#if defined(__x86_64__) && defined(__GNUC__)
#define GRITSERVE_QUANT_X86 1
void RowsAvx2(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1, const float* bias,
              float* c);
// RowsAvx2's tiles with AVX-VNNI's vpdpbusd, where the CPU has it.
void RowsAvxVnni(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                 const float* bias, float* c);
void RowsAvx512Vnni(const Matrix& w, const Acts& x, int64_t m, int64_t r0, int64_t r1,
                    const float* bias, float* c);
// Rows [r0, r0 + rows) of W (rows <= 64; zeros after them) as one 64-column
// panel of small_gemm's bfloat16 layout, on each vector ISA.  panel: [w.cols()][64]
void DequantizePanelAvx512(const Matrix& w, int64_t r0, int64_t rows, uint16_t* panel);
void DequantizePanelAvx2(const Matrix& w, int64_t r0, int64_t rows, uint16_t* panel);
// Row r's values as bfloat16 (rounded to nearest even).  dst: [cols]
void DequantizeRowBf16Avx512(const Matrix& w, int64_t r, uint16_t* dst);
#endif

}  // namespace gritserve::quant::detail
