// Fused CPU float32 kernels for the decoder's small per-token steps.
//
// A 32-token prompt over cached documents spends as long in ~30 small ATen ops
// per layer (norm statistics, RoPE's cat/neg/mul/add, SiLU, mask add, softmax)
// as in its attention: each op costs a dispatch, an allocation and an OpenMP
// fork/join over a few kilobytes. Each kernel here does one such step in one
// pass over memory. Inputs must be CPU float32 and contiguous where stated;
// Applies() says whether a tensor qualifies, and callers keep the ATen
// formulation for everything else (CUDA, half precision). Loops are written
// for auto-vectorization and compiled once per ISA (AVX-512, AVX2 with FMA,
// baseline x86-64), so one binary runs everywhere and uses the widest vectors
// the CPU has and GRITSERVE_CPU_ISA allows.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace gritserve::cpu_kernels {

// Which compiled copy of the loops runs: kernels::ActiveIsa() (dispatch.h).

// How many threads the kernels split their rows over: LibTorch's intra-op
// thread count when this file was built with OpenMP, 1 when it was not (then
// at::parallel_for runs everything on the caller; the build must not let that
// happen unnoticed, hence a test and a line in the engine's start-up log).
int Threads();

// CPU float32 (contiguity is checked by each kernel's caller).
bool Applies(const at::Tensor& t);

// Whether a CPU float32 tensor holds only bfloat16 numbers (low 16 bits of
// every value zero), as one loaded from a bfloat16 checkpoint does: then a
// bfloat16 copy holds it exactly. One parallel pass, no copies.
bool HoldsBfloat16Values(const at::Tensor& t);

// x += delta (where delta is defined), in place, then returns
// RMSNorm(x) * weight with HF's order of operations: (x * rsqrt(mean(x^2) + eps)) * weight.
//   x, delta: [N, H] contiguous; weight: [H]  ->  [N, H]
at::Tensor AddRmsNorm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                      float eps);

// RoPE on the fused projection output. Rotates the key heads in place and
// returns the query heads rotated, multiplied by `q_scale` (attention's
// 1/sqrt(D), folded in here), and laid out per head.
//   qkv: [B*T, (Hq + 2 Hkv) D] contiguous; cos, sin: [B*T, D/2] (half tables)
//   -> q: [B, Hq, T, D] contiguous
at::Tensor RopeQk(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t b,
                  int64_t hq, int64_t hkv, int64_t d, float q_scale);

// h = silu(gate) * up for the fused gate/up projection output.
//   gu: [N, 2 I] contiguous  ->  [N, I]
at::Tensor SiluMul(const at::Tensor& gu);

// In place: scores = softmax(scores + mask) over the last axis, where each group
// of `heads` consecutive [T, S] blocks shares the batch's mask.
//   scores: [B, heads, T, S] contiguous; mask: [B, T, S] contiguous
void MaskedSoftmax(const at::Tensor& scores, const at::Tensor& mask);

// Attention of one query token per batch row (a decode step), in one pass
// per KV head: the G query heads' scores, masked softmax and product with V
// over keys read once, where LibTorch's two batched products, softmax and
// layout copies cost two dozen dispatched ops in every layer.
//   q: [B, Hkv, G, D] contiguous, already scaled; row gi of q[b, h] is query
//      head h G + gi
//   k, v: [B, Hkv, S, D], unit stride along D (KV cache views)
//   mask: [B, 1, S] contiguous, additive -> [B, Hkv G D]
at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask);

// Copies a block of stored keys and values into KV cache slots, rotating the
// keys by a fixed angle per frequency (cos, sin: [D/2]) on the way: moves a
// cached document's keys to its place in a prompt in one parallel pass over
// all layers.
//   k_src[l], v_src[l]: [H, T, D] contiguous; k_dst[l], v_dst[l]: [H, T, D]
//   with unit stride in D and stride D in T (a KV cache slice)
void PlaceKv(const std::vector<at::Tensor>& k_dst, const std::vector<at::Tensor>& k_src,
             const std::vector<at::Tensor>& v_dst, const std::vector<at::Tensor>& v_src,
             const at::Tensor& cos, const at::Tensor& sin);

// y = W x for a single row, streaming W once across all threads: the LM head
// at decode and time to first token, where W (the embedding matrix when tied)
// is read in place.
//   w: [O, I] contiguous; x: [I] contiguous  ->  [O]
at::Tensor Gemv(const at::Tensor& w, const at::Tensor& x);

// y = x W^T for float32 rows against bfloat16 weights, accumulating in
// float32. Where W's values are bfloat16 numbers held as float32 (a bfloat16
// checkpoint computed in float32) this equals the float32 product up to
// summation order, reading half the bytes: the LM head's weight stream.
//   w: [O, I] bfloat16 contiguous; x: [M, I] float32 contiguous  ->  [M, O]
at::Tensor MatmulBf16Weights(const at::Tensor& x, const at::Tensor& w);

}  // namespace gritserve::cpu_kernels
