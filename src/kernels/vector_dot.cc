#include "gritserve/kernels/vector_dot.h"

namespace gritserve::kernels {
namespace {

// Sixteen independent float lanes: the vectoriser turns the inner loop into
// one AVX-512 register (or two AVX2 ones) without reassociating anything, so
// every variant is this one loop compiled for its own target (always inlined,
// so it is vectorised for the caller's target, not the build's baseline).
__attribute__((always_inline)) inline float DotLanes(const float* a, const float* b, size_t n) {
  constexpr size_t kLanes = 16;
  float s[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) s[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) s[0] += a[i] * b[i];
  float total = 0;
  for (size_t j = 0; j < kLanes; ++j) total += s[j];
  return total;
}

}  // namespace

__attribute__((target("avx512f"))) float DotF32Avx512(const float* a, const float* b, size_t n) {
  return DotLanes(a, b, n);
}

__attribute__((target("avx2,fma"))) float DotF32Avx2(const float* a, const float* b, size_t n) {
  return DotLanes(a, b, n);
}

float DotF32Plain(const float* a, const float* b, size_t n) { return DotLanes(a, b, n); }

DotF32Fn SelectDotF32(const Dispatch& dispatch) {
  if (dispatch.isa == Isa::kAvx512) return DotF32Avx512;
  if (dispatch.isa == Isa::kAvx2) return DotF32Avx2;
  return DotF32Plain;
}

}  // namespace gritserve::kernels
