#include "gritserve/kernels/attention.h"

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
//   -> *out: [B, Hkv, G T, D]
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
    scores = at::softmax(scores.view({b, hkv, g, t, s}).add_(mask), -1).view({b, hkv, rows, s});
  }
  return onednn::BatchedMatmul(scores, v, *out);
#else
  (void)backend, (void)qg, (void)k, (void)v, (void)mask, (void)scale, (void)g, (void)out;
  return false;
#endif
}

}  // namespace

AttentionBackend AttentionBackend::For(const at::Device& device, at::ScalarType dtype) {
  AttentionBackend b;
  const bool cpu_f32 = device.is_cpu() && dtype == at::kFloat;
  b.fused = cpu_f32 && Dispatch::Current().fused;
  b.onednn = cpu_f32 && Linear::CpuOneDnn();
  b.one_pass = b.fused && cpu_attention::Available();
  return b;
}

at::Tensor Attention(const AttentionBackend& backend, const at::Tensor& qg, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& mask, double scale, int64_t g) {
  const int64_t b = qg.size(0), hkv = qg.size(1), rows = qg.size(2), d = qg.size(3);
  const int64_t t = rows / g, s = k.size(2);
  if (backend.one_pass && rows >= kPromptRows && scale == 1.0) {
    const at::Tensor mask3 = mask.reshape({b, t, s});  // [B, T, S]
    if (cpu_attention::Suits(qg, k, v, mask3, g)) return cpu_attention::Attend(qg, k, v, mask3, g);
  }
  at::Tensor out;  // [B, Hkv, G T, D]
  if (!AttentionOneDnn(backend, qg, k, v, mask, scale, g, &out)) {
    at::Tensor scores = at::matmul(qg, k.transpose(-1, -2));  // [B, Hkv, G T, S]
    if (scale != 1) scores.mul_(scale);
    at::Tensor probs;  // [B, Hkv, G T, S]
    if (backend.fused) {
      probs = scores.contiguous();
      cpu_kernels::MaskedSoftmax(probs.view({b, hkv * g, t, s}), mask);
    } else {
      scores = scores.view({b, hkv, g, t, s}).add_(mask);  // [B, Hkv, G, T, S]
      probs = at::softmax(scores, -1, at::kFloat).to(qg.scalar_type()).view({b, hkv, rows, s});
    }
    out = at::matmul(probs, v);
  }
  return out.view({b, hkv * g, t, d}).transpose(1, 2).reshape({b * t, hkv * g * d});
}

}  // namespace gritserve::kernels
