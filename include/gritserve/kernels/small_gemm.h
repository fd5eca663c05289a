// A float32 matrix product for a few dozen rows against weights packed in
// oneDNN's blocked layout, overlapping the weight stream with the arithmetic;
// and the same kernel over bfloat16-valued weights kept in bfloat16 (below).
//
// At 24-64 rows (a question over cached documents, a short prompt, a batch of
// concurrent decode steps) a product reads each weight once from DRAM and
// uses it only that many times. oneDNN's kernels then run at the sum of the
// memory time and the compute time, as if neither hid the other: 32 rows
// against 35 MB of weights took 1.9-2.1 ms on the 2-core CI-class machine,
// where streaming alone takes ~0.6 ms and the arithmetic ~1.4 ms. This kernel
// prefetches the next block of weights into L2 while it multiplies the
// current one, one cache line per inner step. Side by side on that machine
// it ran 12-26% faster at 24-48 rows when the memory bus was quiet, and on
// par when neighbours saturated it. Results equal oneDNN's up to summation
// order.
#pragma once

#include <cstdint>

#include "gritserve/kernels/dispatch.h"

namespace gritserve::small_gemm {

// Whether this CPU and build run the kernel (x86-64 with AVX-512F).
bool Available();

// The row counts the kernel is chosen for; oneDNN's kernels win elsewhere
// (fewer rows are bound by memory bandwidth alone, more by arithmetic alone).
bool Suits(int64_t rows);

// c = a w + bias.
//   a: [m, k] row-major float32; w: [k, n] in oneDNN's BA16a64b layout (64-column
//   panels of [kpad][64], kpad = k rounded up to 16, zero-padded);
//   bias: [n] or null; c: [m, n] row-major. Needs m <= 64.
void Run(const float* a, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
         float* c);

// The same product for weights whose values are bfloat16 numbers (a bfloat16
// checkpoint computed in float32), kept in bfloat16 and widened exactly in
// registers: half the memory and half the bytes streamed per product, with
// the float32 result unchanged up to summation order. Any row count: the
// kernel also stands in for oneDNN on long prompts, since keeping a float32
// copy for oneDNN would cost the memory saved. On AVX-512F, and on AVX2 + FMA
// (its own, narrower register tiles over the same panels).

// The widest the CPU and build run, within what kernels::Dispatch allows
// (GRITSERVE_CPU_ISA, a test's ScopedIsa); kBaseline: none. Read at load by
// the layers that hold panels.
kernels::Isa Bf16PanelIsa();
// Whether this CPU and build can run `isa`'s panels (GRITSERVE_CPU_ISA aside):
// AVX2 or AVX-512, never kBaseline.
bool PanelIsaAvailable(kernels::Isa isa);

// Elements of the packed form of a [k, n] matrix.
int64_t Bf16PanelElements(int64_t k, int64_t n);

// Packs w into 64-column panels of [k][64] bfloat16 (columns past n zero),
// each row of a panel as two 32-value halves with columns c and c + 16 side by
// side. w: [n, k] when out_in (HF's [out, in]) else [k, n], row-major float32
// whose values must be bfloat16 numbers (their low 16 bits are dropped), or
// the bfloat16 bits themselves.
void PackBf16(const float* w, bool out_in, int64_t k, int64_t n, uint16_t* dst);
void PackBf16(const uint16_t* w, bool out_in, int64_t k, int64_t n, uint16_t* dst);

// c = a w + bias on `isa` (which must be available; not kBaseline).
// a: [m, k] row-major float32; w: PackBf16's output; bias: [n] or null;
// c: [m, n] row-major. Needs m, k, n >= 1.
void RunBf16(const float* a, int64_t m, int64_t k, const uint16_t* w, int64_t n, const float* bias,
             float* c, kernels::Isa isa);

}  // namespace gritserve::small_gemm
