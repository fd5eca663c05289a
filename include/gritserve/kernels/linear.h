// A dense layer y = x W^T + b with immutable weights, and the one place that
// decides how its matrix product runs.
//
// On CPU in float32, when the build found oneDNN (the library LibTorch itself
// uses), the weights are reordered once at load into the blocked layout that
// oneDNN's brgemm kernels read directly. OpenBLAS's sgemm instead repacks the
// whole weight matrix on every call, which for prompt-sized inputs costs about
// as much as the arithmetic, and it is pinned to AVX2 here. Elsewhere (CUDA,
// half precision, builds without oneDNN) it is at::addmm.
//
// Weights whose values are all bfloat16 numbers (a bfloat16 checkpoint, as
// Qwen2.5 and GritLM ship, computed in float32) are instead kept in bfloat16
// and multiplied by small_gemm's widening kernel at every row count: the
// same float32 arithmetic from half the memory and half the bytes streamed.
//
// With a quant::Format the weights are quantized in blocks at construction
// (--weights q8|q4) and every product runs on quant's kernels for the CPU's
// ISA (chosen then).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "gritserve/kernels/quant.h"
#include "gritserve/kernels/small_gemm.h"

namespace gritserve {

class Linear {
 public:
  // How the weight matrix is handed over.
  enum class Layout {
    kOutIn,  // HF layout [out, in]
    kInOut,  // transposed, [in, out]
  };

  Linear() = default;

  // weight: [out, in] or [in, out] per `layout`; bias: [out] or undefined.
  // With `pack`, the weights may be rewritten into a private layout (and the
  // given tensor released); without it they are used in place, so a matrix
  // shared with another user (tied embeddings) keeps a single copy.
  // With `packed_dtype` kFloat, bfloat16 weights (or float32 ones holding only
  // bfloat16 values) become bfloat16 panels where Bfloat16PanelsAvailable(),
  // and are widened to float32 otherwise.
  // `packed_dtype` kBFloat16 (CPU float32 or bfloat16 weights, with pack, and only where
  // CpuBf16Available()) packs the weights in bfloat16: inputs are rounded to
  // bfloat16 per call, products accumulate and return in float32.
  Linear(at::Tensor weight, Layout layout, at::Tensor bias, bool pack,
         at::ScalarType packed_dtype = at::kFloat);

  // weight: [out, in] CPU float32 or bfloat16, quantized here per `format`
  // (then released); bias: [out] or undefined. Products take and give float32.
  // With `bf16_products` (where CpuBf16Available()) prompt-sized products run
  // in native bfloat16: the weights dequantized to bfloat16 a chunk at a
  // time, inputs rounded to bfloat16, float32 accumulation, as the packed
  // bfloat16 layers do; one-row and few-row products keep the int8 kernels.
  Linear(const at::Tensor& weight, at::Tensor bias, quant::Format format,
         bool bf16_products = false);

  // x: [N, in] -> [N, out]
  at::Tensor operator()(const at::Tensor& x) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool packed() const { return packed_ != nullptr || bf16_panels_.defined(); }
  // Whether the weights are held as bfloat16 panels for float32 products (above).
  bool bfloat16_values() const { return bf16_panels_.defined(); }
  // The quantized weights, when built with a quant::Format (else null).
  const quant::Matrix* quantized() const { return quant_.get(); }

  // Which kernel family the layers of this build use on CPU float32, for logs.
  static std::string CpuBackend();
  // Whether CPU float32 products use oneDNN in this process (build, CPU and
  // GRITSERVE_CPU_GEMM permitting); read when a layer or decoder is built.
  static bool CpuOneDnn();
  // Whether float32 layers hold bfloat16-valued (or bfloat16) weights as
  // bfloat16 panels here: an AVX-512 or AVX2 + FMA CPU, and neither GRITSERVE_CPU_KERNELS=aten
  // nor an explicit GRITSERVE_CPU_GEMM (blas, onednn), which keep their float32
  // paths for comparisons. Read when a layer is built.
  static bool Bfloat16PanelsAvailable();
  // Whether bfloat16-packed layers run on native bfloat16 kernels here
  // (oneDNN with AVX512-BF16 or AMX).
  static bool CpuBf16Available();

  // oneDNN's view of the weights; defined in linear.cc.
  struct Packed;

 private:
  int64_t in_ = 0, out_ = 0;
  at::Tensor weight_;  // [out, in] or [in, out] per layout_; undefined once packed
  Layout layout_ = Layout::kOutIn;
  at::Tensor bias_;                       // [out] or undefined
  std::shared_ptr<const Packed> packed_;  // oneDNN state, when used
  at::Tensor gemv_weight_;                // [out, in] float32 CPU, read in place for one-row inputs
  at::Tensor bf16_panels_;  // [Bf16PanelElements(in, out)] bfloat16, small_gemm::PackBf16's layout
  kernels::Isa panel_isa_ = kernels::Isa::kBaseline;  // chosen with bf16_panels_
  std::shared_ptr<const quant::Matrix> quant_;        // [out, in] in blocks, when quantized
  kernels::Isa quant_isa_ = kernels::Isa::kBaseline;
  bool quant_bf16_products_ = false;  // prompt-sized quantized products in bfloat16
};

}  // namespace gritserve
