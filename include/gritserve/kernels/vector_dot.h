// The float inner product that ranks stored vectors (a collection's exact scan
// and its hnswlib graph), one variant per ISA like the other fast paths, and
// chosen through Dispatch so GRITSERVE_CPU_ISA switches it too. No LibTorch:
// the collection layer uses it on raw float rows.
#pragma once

#include <cstddef>

#include "gritserve/kernels/dispatch.h"

namespace gritserve::kernels {

// sum_i a[i] * b[i] in float with independent lanes (not the sequential sum):
// callers that need an exact order re-score their close calls in double.
using DotF32Fn = float (*)(const float* a, const float* b, size_t n);

// The variant these paths allow: AVX-512F, AVX2 with FMA, or plain code.
DotF32Fn SelectDotF32(const Dispatch& dispatch);

// Each variant, for tests of every path the CPU has; call the AVX ones only
// where CpuHasAvx512() / CpuHasAvx2() say so.
float DotF32Avx512(const float* a, const float* b, size_t n);
float DotF32Avx2(const float* a, const float* b, size_t n);
float DotF32Plain(const float* a, const float* b, size_t n);

}  // namespace gritserve::kernels
