// The float64 attention reference that the kernel tests compare against.
#pragma once

#include <ATen/ATen.h>

namespace gritserve::testing {

// softmax(q k^T + mask) v in float64, laid out as the kernels return it.
//   q: [B, Hkv, G T, D]; k, v: [B, Hkv, S, D]; mask: [B, T, S] -> [B T, Hkv G D]
inline at::Tensor AttentionReference(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& mask, int64_t g) {
  const int64_t b = q.size(0), hkv = q.size(1), t = q.size(2) / g, d = q.size(3), s = k.size(2);
  const at::Tensor scores =
      at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(2, 3)).view({b, hkv, g, t, s}) +
      mask.to(at::kDouble).view({b, 1, 1, t, s});
  const at::Tensor out = at::matmul(at::softmax(scores, -1).view({b, hkv, g * t, s}),
                                    v.to(at::kDouble));  // [B, Hkv, G T, D]
  return out.view({b, hkv * g, t, d}).transpose(1, 2).reshape({b * t, hkv * g * d});
}

inline double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace gritserve::testing
