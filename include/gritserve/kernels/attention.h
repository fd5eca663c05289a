// Grouped-query attention for the decoder: which backend runs the products is
// chosen once per model (at load) and the decoder only hands over operands
// and a description of the mask. Long inputs run in blocks of query rows, so
// no [T, S] tensor (scores or mask) is ever held whole: memory stays linear
// in the number of tokens.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace gritserve::kernels {

struct AttentionBackend {
  // Prompt-sized float32 CPU inputs: the one-pass AVX-512 kernel where it
  // suits the operands, else the fused masked softmax between two products.
  bool fused = false;
  // Those products on oneDNN (it reads strided K/V views in place).
  bool onednn = false;
  // The one-pass kernel (cpu_attention.h) is there for `fused` to use.
  bool one_pass = false;
  // What one block of query rows may hold: its scores (and their softmax)
  // on the paths that materialise them, its additive mask in the one-pass
  // kernel (whose scores live in fixed scratch). Inputs whose whole [T, S]
  // fits run as one block, exactly as they would without blocking.
  int64_t score_block_bytes = int64_t{64} << 20;
  int64_t mask_block_bytes = int64_t{16} << 20;

  // Query tokens per block for T tokens against S keys, over `heads` query
  // heads and `batch` rows, within the budget above; T when all fit.
  int64_t QueryBlock(int64_t batch, int64_t heads, int64_t t, int64_t s, bool one_pass) const;

  // What runs for a model computing in `dtype` on `device`, from the CPU and
  // the environment switches (kernels/dispatch.h).
  static AttentionBackend For(const at::Device& device, at::ScalarType dtype);
};

// Which keys each query token may see, held in linear space: token t of every
// batch row sees keys [lo[t], hi[t]) that are valid in that row. Causal (with
// or without a sliding window), bidirectional and document-block layouts are
// all intervals of this kind. Small masks are also kept materialised whole,
// so that the layers of one forward pass share one additive tensor.
class AttentionMask {
 public:
  AttentionMask() = default;
  // lo, hi: [T] int64; key_valid: [B, S] bool. Additive masks come out in
  // `dtype` on key_valid's device, with `masked` where a key is hidden.
  AttentionMask(at::Tensor lo, at::Tensor hi, at::Tensor key_valid, at::ScalarType dtype,
                float masked);
  // An explicit additive mask [B, T, S] (0 where allowed), e.g. from a test.
  static AttentionMask Dense(at::Tensor mask);

  int64_t batch() const { return batch_; }
  int64_t rows() const { return rows_; }
  int64_t keys() const { return keys_; }

  // Builds the whole additive mask now when it holds at most `max_elements`
  // values, so Rows then only slices it.
  void MaterialiseIfSmall(int64_t max_elements);
  // The additive mask of query tokens [t0, t0 + n).  -> [B, n, S] contiguous
  at::Tensor Rows(int64_t t0, int64_t n) const;
  // The same mask restricted to query tokens [t0, t0 + n).
  AttentionMask Narrow(int64_t t0, int64_t n) const;

 private:
  at::Tensor lo_, hi_;    // [T] int64, or undefined for a dense mask
  at::Tensor key_valid_;  // [B, S] bool
  at::Tensor whole_;      // [B, T, S] additive, when materialised
  at::ScalarType dtype_ = at::kFloat;
  float masked_ = 0;
  int64_t batch_ = 0, rows_ = 0, keys_ = 0;
};

// softmax(scale q k^T + mask) v, for the G query heads that share each KV head
// stacked along the token axis.
//   qg: [B, Hkv, G T, D]; k, v: [B, Hkv, S, D] (cache views); mask: B x T x S
//   -> [B T, Hkv G D], the output projection's input
// `scale` multiplies q (1 when the caller already did).
at::Tensor Attention(const AttentionBackend& backend, const at::Tensor& qg, const at::Tensor& k,
                     const at::Tensor& v, const AttentionMask& mask, double scale, int64_t g);

}  // namespace gritserve::kernels
