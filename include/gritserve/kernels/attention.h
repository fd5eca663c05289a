// Grouped-query attention products for the decoder: which backend runs them
// is chosen once per model (at load) and the decoder only hands over operands.
#pragma once

#include <ATen/ATen.h>

namespace gritserve::kernels {

struct AttentionBackend {
  // Prompt-sized float32 CPU inputs: the one-pass AVX-512 kernel where it
  // suits the operands, else the fused masked softmax between two products.
  bool fused = false;
  // Those products on oneDNN (it reads strided K/V views in place).
  bool onednn = false;
  // The one-pass kernel (cpu_attention.h) is there for `fused` to use.
  bool one_pass = false;

  // What runs for a model computing in `dtype` on `device`, from the CPU and
  // the environment switches (kernels/dispatch.h).
  static AttentionBackend For(const at::Device& device, at::ScalarType dtype);
};

// softmax(scale q k^T + mask) v, for the G query heads that share each KV head
// stacked along the token axis.
//   qg: [B, Hkv, G T, D]; k, v: [B, Hkv, S, D] (cache views); mask: [B, 1, 1, T, S]
//   additive (0 where allowed) -> [B T, Hkv G D], the output projection's input
// `scale` multiplies q (1 when the caller already did).
at::Tensor Attention(const AttentionBackend& backend, const at::Tensor& qg, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& mask, double scale, int64_t g);

}  // namespace gritserve::kernels
