// Grouped-query attention for prompt-sized float32 inputs on AVX-512 and AVX2
// CPUs, in one pass per block of query rows: scores, masked softmax and the
// product with V stay in L1/L2 instead of a [G T, S] score matrix per KV head going
// out to memory and back between three separate steps.
//
// A question over cached documents (32 tokens against 1312 keys in
// Qwen2.5-0.5B's shape) spent about 0.7 ms per layer in attention that way:
// two oneDNN products of 0.25 ms each, a softmax pass over 2.4 MB of scores
// and a transposing copy of the output. Keys are first packed transposed in
// 64-key panels (once per KV head, shared by all its row blocks); each row
// block then walks the keys in chunks with an online softmax (running max
// and sum, the partial output rescaled when the max grows), so any key count
// works with fixed scratch. Results equal the three-step formulation up to
// summation order. Alternating the two per request in one process, the cached
// request's median time to first token fell 2-4%; prefill and embedding
// throughput stayed within noise. The pass is written once
// (cpu_attention_block.inc) over each ISA's vector operations and register
// tile (avx512_tile.h, avx2_tile.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace gritserve::cpu_attention {

// Whether this CPU and build run the kernel: x86-64 with AVX-512F or AVX2 and
// FMA, whichever kernels::ActiveIsa() picks (GRITSERVE_CPU_ISA, or a test's
// ScopedIsa); read by AttentionBackend::For at load.
bool Available();

// Whether Attend takes these operands: CPU float32, D a multiple of 64 up to
// 256, unit stride along D for k and v, q contiguous, and shapes as Attend
// describes.
bool Suits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t g);
// The same, and a contiguous [B, T, S] float32 mask for the dense Attend.
bool Suits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
           int64_t g);

// softmax(q k^T + mask) v, written in the layout the output projection reads.
//   q: [B, Hkv, G T, D] contiguous, already multiplied by 1/sqrt(D); row
//      gi T + t of q[b, h] is query head h G + gi at token t
//   k, v: [B, Hkv, S, D], unit stride along D (KV cache views, or views
//      into the fused projection output)
//   mask: [B, T, S] contiguous, additive (0 where allowed)
//   -> [B T, Hkv G D]
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask, int64_t g);

// The additive mask of query tokens [t0, t0 + n): [B, n, S] contiguous float32.
using MaskRows = std::function<at::Tensor(int64_t t0, int64_t n)>;

// The same with the mask asked for `block` query tokens at a time, so that
// only a [B, block, S] slice of it exists at once (keys are packed once for
// all blocks). One block of T tokens splits work exactly as the dense form.
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const MaskRows& mask_rows, int64_t block, int64_t g);

}  // namespace gritserve::cpu_attention
