#include "gritserve/kernels/small_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "gritserve/common/error.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/work_steal.h"
#include "small_gemm_internal.h"

#ifdef GRITSERVE_SMALL_GEMM
// GCC 12 flags the _mm512_undefined_* pass-through operands inside its own
// AVX-512 headers once they are inlined (here: the bfloat16 widening shifts).
#ifndef __clang__  // a GCC-only warning
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "avx512_tile.h"
#endif

namespace gritserve::small_gemm {

using detail::BlockAt;
using detail::KBlock;
using detail::kLineBytes;
using detail::kMaxBf16Rows;
using detail::kPanel;

#ifdef GRITSERVE_SMALL_GEMM
namespace {

static_assert(kPanel == avx512_tile::kCols, "a panel is one register tile wide");
constexpr int64_t kKBlock = 128;  // rows of a panel multiplied per pass: 32 KB of float32 weights
constexpr int64_t kMaxRows = 64;
// A bfloat16-panel item's kMaxBf16Rows rows are 16 tiles of 6.
static_assert(kMaxBf16Rows >= kMaxRows, "PanelRows' buffer serves both products");
static_assert(kLineBytes == avx512_tile::kLineBytes, "one cache line size");

// c[:, panel p] = acc (+ bias), for the m rows of acc ([m][64]).
__attribute__((target("avx512f"))) void Store(const float* acc, int64_t m, int64_t n,
                                              const float* bias, float* c, int64_t p) {
  const int64_t cols = std::min(kPanel, n - p * kPanel);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t left = cols - 16 * j;
      if (left <= 0) break;
      __m512 v = _mm512_load_ps(acc + r * kPanel + 16 * j);
      float* dst = c + r * n + p * kPanel + 16 * j;
      const float* b = bias == nullptr ? nullptr : bias + p * kPanel + 16 * j;
      if (left >= 16) {  // masked loads and stores are slow on some cores: full vectors plain
        if (b != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(b));
        _mm512_storeu_ps(dst, v);
      } else {
        const auto mask = static_cast<__mmask16>((1u << left) - 1);
        if (b != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b));
        _mm512_mask_storeu_ps(dst, mask, v);
      }
    }
  }
}

// Rows [m0, m0 + m) of one panel ([k][64], float32 or bfloat16 bits) into
// columns [64 p, 64 p + 64) of c, `kblock` weight rows per pass. The block
// multiplied next (the next panel's first, `next_panel`, after the last;
// null: none) is prefetched into L2 over this block's tiles: the bus works
// while the FMA units do. From 4 tiles (24 rows) the tiles have steps enough
// to cover every line of a weight row.
template <typename BT>
__attribute__((target("avx512f"))) void PanelRows(const float* a, int64_t m0, int64_t m, int64_t k,
                                                  const BT* panel, const BT* next_panel,
                                                  int64_t kblock, int64_t n, const float* bias,
                                                  float* c, int64_t p) {
  alignas(64) float acc[kMaxBf16Rows * kPanel];  // [m][64]: the panel's outputs
  for (int64_t k0 = 0; k0 < k; k0 += kblock) {
    const KBlock<BT> b = BlockAt(k0, k, kblock, panel, next_panel);  // block: [kn][64]
    avx512_tile::Rows(m, a + m0 * k + k0, k, b.block, kPanel, b.kn, acc, kPanel, k0 > 0,
                      reinterpret_cast<const char*>(b.next), b.lines);
  }
  Store(acc, m, n, bias, c + m0 * n, p);
}

}  // namespace

bool Available() { return kernels::Dispatch::Current().isa == kernels::Isa::kAvx512; }

void Run(const float* a, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
         float* c) {
  if (m < 1 || m > kMaxRows || !kernels::CpuHas(kernels::Isa::kAvx512)) {
    throw Error(ErrorKind::kInternal, "small_gemm::Run called outside its row range or ISA");
  }
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const int64_t kpad = (k + 15) / 16 * 16;  // BA16a64b pads each panel's depth to 16
  work_steal::ParallelFor(panels, [&](int64_t p, int64_t next) {
    PanelRows(a, 0, m, k, w + p * kpad * kPanel, next < 0 ? nullptr : w + next * kpad * kPanel,
              kKBlock, n, bias, c, p);
  });
}

bool PanelIsaAvailable(kernels::Isa isa) {
  return isa != kernels::Isa::kBaseline && kernels::CpuHas(isa);
}

void RunBf16(const float* a, int64_t m, int64_t k, const uint16_t* w, int64_t n, const float* bias,
             float* c, kernels::Isa isa) {
  if (m < 1 || k < 1 || n < 1 || !PanelIsaAvailable(isa)) {
    throw Error(ErrorKind::kInternal, std::string("small_gemm::RunBf16 called with an empty "
                                                  "shape or off its ISA (") +
                                          kernels::IsaName(isa) + ")");
  }
  const int64_t panels = (n + kPanel - 1) / kPanel;
  // Items are (row block, panel), panel fastest: a thread's share walks the
  // weights in memory order against one block of rows held in L2.
  const int64_t blocks = (m + kMaxBf16Rows - 1) / kMaxBf16Rows;
  auto first_row = [&](int64_t b) { return m * b / blocks; };  // even split
  const bool avx512 = isa == kernels::Isa::kAvx512;
  work_steal::ParallelFor(blocks * panels, [&](int64_t item, int64_t next) {
    const int64_t b = item / panels, p = item % panels;
    const uint16_t* next_panel = next < 0 ? nullptr : w + (next % panels) * k * kPanel;
    const int64_t rows = first_row(b + 1) - first_row(b);
    // Past a few dozen rows the arithmetic, not the weight stream, bounds the
    // product, and deeper blocks cost fewer accumulator reloads (256 beat 128
    // by 3-6% at 1312 rows, and lost at 32).
    const int64_t kblock = rows > kMaxRows ? 2 * kKBlock : kKBlock;
    if (avx512) {
      PanelRows(a, first_row(b), rows, k, w + p * k * kPanel, next_panel, kblock, n, bias, c, p);
    } else {
      detail::PanelRowsAvx2(a, first_row(b), rows, k, w + p * k * kPanel, next_panel, kblock, n,
                            bias, c, p);
    }
  });
}

#else  // not x86-64 GCC/Clang

bool Available() { return false; }

void Run(const float*, int64_t, int64_t, const float*, int64_t, const float*, float*) {
  throw Error(ErrorKind::kInternal, "small_gemm is not built for this CPU");
}

bool PanelIsaAvailable(kernels::Isa) { return false; }

void RunBf16(const float*, int64_t, int64_t, const uint16_t*, int64_t, const float*, float*,
             kernels::Isa) {
  throw Error(ErrorKind::kInternal, "small_gemm is not built for this CPU");
}

#endif

bool Suits(int64_t rows) { return rows >= 24 && rows <= 64; }

kernels::Isa Bf16PanelIsa() {
  const kernels::Isa isa = kernels::Dispatch::Current().isa;
  return PanelIsaAvailable(isa) ? isa : kernels::Isa::kBaseline;
}

int64_t Bf16PanelElements(int64_t k, int64_t n) { return (n + kPanel - 1) / kPanel * kPanel * k; }

namespace {

uint16_t Bfloat16Bits(float v) {  // the top half; the caller guarantees the bottom is zero
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint16_t>(bits >> 16);
}
uint16_t Bfloat16Bits(uint16_t v) { return v; }

template <typename T>
void Pack(const T* w, bool out_in, int64_t k, int64_t n, uint16_t* dst) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t kk = 0; kk < k; ++kk) {
        uint16_t* row = dst + (p * k + kk) * kPanel;  // two 32-value halves
        for (int64_t j = 0; j < kPanel; ++j) {
          const int64_t col = p * kPanel + j;
          // Zero padding past the last column.
          const uint16_t bits =
              col < n ? Bfloat16Bits(out_in ? w[col * k + kk] : w[kk * n + col]) : uint16_t{0};
          // Column j sits in half j / 32 at lane j % 16, low value for the
          // first 16 columns of the half, high for the next 16 (see LoadB).
          const int64_t h = j / 32, c = j % 32;
          row[32 * h + 2 * (c % 16) + c / 16] = bits;
        }
      }
    }
  });
}

}  // namespace

void PackBf16(const float* w, bool out_in, int64_t k, int64_t n, uint16_t* dst) {
  Pack(w, out_in, k, n, dst);
}

void PackBf16(const uint16_t* w, bool out_in, int64_t k, int64_t n, uint16_t* dst) {
  Pack(w, out_in, k, n, dst);
}

}  // namespace gritserve::small_gemm
