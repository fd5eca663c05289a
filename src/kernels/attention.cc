#include "gritserve/kernels/attention.h"

#include <algorithm>
#include <utility>

#include "gritserve/common/error.h"
#include "gritserve/kernels/cpu_attention.h"
#include "gritserve/kernels/cpu_kernels.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/linear.h"
#include "onednn.h"

namespace gritserve::kernels {
namespace {

// Query rows (G T) from which attention runs as a prompt (the fused CPU pass,
// or oneDNN's products); decode steps (G rows) keep LibTorch's products,
// whose per-call cost is lower there.
constexpr int64_t kPromptRows = 16;

// The attention products on oneDNN, for prompt-sized CPU float32 inputs: it
// reads the strided K/V views (cache slices, fused-projection columns) in place,
// where LibTorch's matmul copies or runs at half speed. Decode steps (a few
// rows, a new key count every step, so a new primitive every step) stay on
// LibTorch. Returns false where it does not apply.
//   mask: [B, T, S] -> *out: [B, Hkv, G T, D]
bool AttentionOneDnn(const AttentionBackend& backend, const at::Tensor& qg, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& mask, double scale, int64_t g,
                     at::Tensor* out) {
#ifdef GRITSERVE_HAVE_DNNL
  const int64_t b = qg.size(0), hkv = qg.size(1), rows = qg.size(2);
  const int64_t s = k.size(2), t = rows / g;
  if (!backend.onednn || rows < kPromptRows || !qg.device().is_cpu() ||
      qg.scalar_type() != at::kFloat) {
    return false;
  }
  at::Tensor scores;  // [B, Hkv, G T, S]
  if (!onednn::BatchedMatmul(scale == 1.0 ? qg : qg * scale, k.transpose(2, 3), scores)) {
    return false;
  }
  if (backend.fused) {
    cpu_kernels::MaskedSoftmax(scores.view({b, hkv * g, t, s}), mask);
  } else {
    scores = at::softmax(scores.view({b, hkv, g, t, s}).add_(mask.view({b, 1, 1, t, s})), -1)
                 .view({b, hkv, rows, s});
  }
  return onednn::BatchedMatmul(scores, v, *out);
#else
  (void)backend, (void)qg, (void)k, (void)v, (void)mask, (void)scale, (void)g, (void)out;
  return false;
#endif
}

// One block of query rows through the products and a softmax.
//   qg: [B, Hkv, G T, D]; mask: [B, T, S] -> [B T, Hkv G D]
at::Tensor AttendBlock(const AttentionBackend& backend, const at::Tensor& qg, const at::Tensor& k,
                       const at::Tensor& v, const at::Tensor& mask, double scale, int64_t g) {
  const int64_t b = qg.size(0), hkv = qg.size(1), rows = qg.size(2), d = qg.size(3);
  const int64_t t = rows / g, s = k.size(2);
  at::Tensor out;  // [B, Hkv, G T, D]
  if (!AttentionOneDnn(backend, qg, k, v, mask, scale, g, &out)) {
    at::Tensor scores = at::matmul(qg, k.transpose(-1, -2));  // [B, Hkv, G T, S]
    if (scale != 1) scores.mul_(scale);
    at::Tensor probs;  // [B, Hkv, G T, S]
    if (backend.fused) {
      probs = scores.contiguous();
      cpu_kernels::MaskedSoftmax(probs.view({b, hkv * g, t, s}), mask);
    } else {
      scores =
          scores.view({b, hkv, g, t, s}).add_(mask.view({b, 1, 1, t, s}));  // [B, Hkv, G, T, S]
      probs = at::softmax(scores, -1, at::kFloat).to(qg.scalar_type()).view({b, hkv, rows, s});
    }
    out = at::matmul(probs, v);
  }
  return out.view({b, hkv * g, t, d}).transpose(1, 2).reshape({b * t, hkv * g * d});
}

}  // namespace

AttentionMask::AttentionMask(at::Tensor lo, at::Tensor hi, at::Tensor key_valid,
                             at::ScalarType dtype, float masked)
    : lo_(std::move(lo)),
      hi_(std::move(hi)),
      key_valid_(std::move(key_valid)),
      dtype_(dtype),
      masked_(masked) {
  if (lo_.dim() != 1 || hi_.sizes() != lo_.sizes() || key_valid_.dim() != 2) {
    throw Error(ErrorKind::kInternal, "AttentionMask: lo, hi [T] and key_valid [B, S]");
  }
  batch_ = key_valid_.size(0), rows_ = lo_.size(0), keys_ = key_valid_.size(1);
}

AttentionMask AttentionMask::Dense(at::Tensor mask) {
  if (mask.dim() != 3) throw Error(ErrorKind::kInternal, "AttentionMask::Dense: [B, T, S]");
  AttentionMask m;
  m.batch_ = mask.size(0), m.rows_ = mask.size(1), m.keys_ = mask.size(2);
  m.dtype_ = mask.scalar_type();
  m.whole_ = std::move(mask);
  return m;
}

void AttentionMask::MaterialiseIfSmall(int64_t max_elements) {
  if (!whole_.defined() && batch_ * rows_ * keys_ <= max_elements) whole_ = Rows(0, rows_);
}

at::Tensor AttentionMask::Rows(int64_t t0, int64_t n) const {
  if (whole_.defined()) {
    at::Tensor r = whole_.narrow(1, t0, n);  // [B, n, S]
    return r.is_contiguous() ? r : r.contiguous();
  }
  const at::TensorOptions opts = key_valid_.options();
  const at::Tensor keys = at::arange(keys_, opts.dtype(at::kLong)).view({1, keys_});  // [1, S]
  at::Tensor allowed = (keys >= lo_.narrow(0, t0, n).view({n, 1}))
                           .logical_and_(keys < hi_.narrow(0, t0, n).view({n, 1}));  // [n, S]
  allowed = allowed.unsqueeze(0).logical_and(key_valid_.unsqueeze(1));               // [B, n, S]
  return at::zeros({batch_, n, keys_}, opts.dtype(dtype_))
      .masked_fill_(allowed.logical_not_(), masked_);
}

AttentionMask AttentionMask::Narrow(int64_t t0, int64_t n) const {
  AttentionMask m = *this;
  if (lo_.defined()) m.lo_ = lo_.narrow(0, t0, n), m.hi_ = hi_.narrow(0, t0, n);
  if (whole_.defined()) m.whole_ = whole_.narrow(1, t0, n);
  m.rows_ = n;
  return m;
}

AttentionBackend AttentionBackend::For(const at::Device& device, at::ScalarType dtype) {
  AttentionBackend b;
  const bool cpu_f32 = device.is_cpu() && dtype == at::kFloat;
  b.fused = cpu_f32 && Dispatch::Current().fused;
  b.onednn = cpu_f32 && Linear::CpuOneDnn();
  b.one_pass = b.fused && cpu_attention::Available();
  return b;
}

int64_t AttentionBackend::QueryBlock(int64_t batch, int64_t heads, int64_t t, int64_t s,
                                     bool one_pass) const {
  const int64_t per_token = (one_pass ? 1 : heads) * batch * s * int64_t{4};
  const int64_t budget = one_pass ? mask_block_bytes : score_block_bytes;
  return std::clamp<int64_t>(budget / std::max<int64_t>(per_token, 1), 1, std::max<int64_t>(t, 1));
}

at::Tensor Attention(const AttentionBackend& backend, const at::Tensor& qg, const at::Tensor& k,
                     const at::Tensor& v, const AttentionMask& mask, double scale, int64_t g) {
  const int64_t b = qg.size(0), hkv = qg.size(1), rows = qg.size(2), d = qg.size(3);
  const int64_t t = rows / g, s = k.size(2);
  if (mask.batch() != b || mask.rows() != t || mask.keys() != s) {
    throw Error(ErrorKind::kInternal, "attention mask does not match its operands");
  }
  // A decode step: one pass per KV head, no scores tensor.
  if (backend.fused && t == 1 && scale == 1.0 && k.stride(3) == 1 && v.stride(3) == 1) {
    return cpu_kernels::DecodeAttention(qg.contiguous(), k, v, mask.Rows(0, 1));
  }
  if (backend.one_pass && rows >= kPromptRows && scale == 1.0 &&
      cpu_attention::Suits(qg, k, v, g)) {
    return cpu_attention::Attend(
        qg, k, v, [&](int64_t t0, int64_t n) { return mask.Rows(t0, n); },
        backend.QueryBlock(b, hkv * g, t, s, /*one_pass=*/true), g);
  }
  const int64_t block = backend.QueryBlock(b, hkv * g, t, s, /*one_pass=*/false);
  if (block >= t) return AttendBlock(backend, qg, k, v, mask.Rows(0, t), scale, g);
  // Long inputs: one block of query tokens at a time (the G heads' rows of
  // those tokens), each written to its rows of the output.
  at::Tensor out = at::empty({b, t, hkv * g * d}, qg.options());  // [B, T, Hq D]
  const at::Tensor q5 = qg.view({b, hkv, g, t, d});               // [B, Hkv, G, T, D]
  for (int64_t t0 = 0; t0 < t; t0 += block) {
    const int64_t n = std::min(block, t - t0);
    const at::Tensor qb = q5.narrow(3, t0, n).reshape({b, hkv, g * n, d});  // [B, Hkv, G n, D]
    const at::Tensor ob = AttendBlock(backend, qb, k, v, mask.Rows(t0, n), scale, g);
    out.narrow(1, t0, n).copy_(ob.view({b, n, hkv * g * d}));
  }
  return out.view({b * t, hkv * g * d});
}

}  // namespace gritserve::kernels
