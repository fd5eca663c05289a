// Loads a checkpoint's weights from safetensors into LibTorch tensors.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <unordered_map>

#include "gritserve/model/config.h"
#include "gritserve/model/safetensors.h"
#include "gritserve/model/tensor_names.h"

namespace gritserve {

// The LibTorch type of a safetensors dtype.
at::ScalarType ToScalarType(DType dtype);

// HF tensor name -> tensor.
using WeightMap = std::unordered_map<std::string, at::Tensor>;

// A checkpoint opened for loading: DIR/model.safetensors, or the shards listed in
// DIR/model.safetensors.index.json ("weight_map"), or the single DIR/*.safetensors
// otherwise, kept mapped while tensors are taken from it.
//
// Strict: every tensor of ExpectedTensors(config) must be present with exactly that shape and
// nothing unexpected may be left over; errors (Error(kLoad)) name the tensor. Tolerated and
// ignored: "*.rotary_emb.inv_freq" buffers, and "lm_head.weight" when tie_word_embeddings.
// All of it is checked when the source opens, before any tensor is read.
//
// Each tensor is copied out of the file only when taken, converted to `dtype` (F32/F16/BF16
// sources; on CPU pass at::kFloat) on `device`; its pages of the mapping are dropped once
// copied. A model that repacks or quantizes its matrices as it takes them (Decoder) therefore
// holds at most a layer's matrices in the checkpoint's precision besides what it keeps, never
// the whole checkpoint: GritLM-7B quantized to 8 bits loads in about its final size.
// A taken tensor is contiguous and owns its memory. Shapes are those of ExpectedTensors, e.g.
// "model.embed_tokens.weight": [vocab, hidden].
// `matrix_dtype`, when given, applies to the linear layers' weight matrices
// (IsMatrixWeight) instead: bfloat16-matmul models load them
// at half the bytes rather than widening the whole checkpoint first. With
// `keep_bfloat16_matrices`, matrices stored as BF16 load as bfloat16 whatever
// `dtype` says: a float32 model that holds them as bfloat16 panels (see
// Linear) or quantizes them then never holds them in float32.
class WeightSource {
 public:
  WeightSource(const std::string& dir, const ModelConfig& config, at::ScalarType dtype,
               const at::Device& device, at::ScalarType matrix_dtype = at::ScalarType::Undefined,
               bool keep_bfloat16_matrices = false);
  // Tensors already in memory (tests, LoadWeights' result), handed out as they are.
  explicit WeightSource(WeightMap tensors);
  WeightSource(WeightSource&&) noexcept;
  WeightSource& operator=(WeightSource&&) noexcept;
  ~WeightSource();

  // The named tensor, each at most once. Error(kLoad) if there is no such tensor (or it
  // was taken already).
  at::Tensor Take(const std::string& name);

  // What was read, for the log: "N tensors (P parameters, X MB in F file(s)) from DIR as
  // float32 (...) on cpu in S s", the time counted from opening.
  std::string Summary() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Every tensor of a WeightSource(dir, ...) at once (logged as read).
WeightMap LoadWeights(const std::string& dir, const ModelConfig& config, at::ScalarType dtype,
                      const at::Device& device,
                      at::ScalarType matrix_dtype = at::ScalarType::Undefined,
                      bool keep_bfloat16_matrices = false);

}  // namespace gritserve
