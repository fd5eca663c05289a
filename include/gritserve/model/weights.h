// Loads a checkpoint's weights from safetensors into LibTorch tensors.
#pragma once

#include <ATen/ATen.h>

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

// Opens DIR/model.safetensors, or the shards listed in DIR/model.safetensors.index.json
// ("weight_map"), or the single DIR/*.safetensors otherwise.
//
// Strict: every tensor of ExpectedTensors(config) must be present with exactly that shape and
// nothing unexpected may be left over; errors (Error(kLoad)) name the tensor. Tolerated and
// ignored: "*.rotary_emb.inv_freq" buffers, and "lm_head.weight" when tie_word_embeddings.
//
// Converts to `dtype` (F32/F16/BF16 sources; on CPU pass at::kFloat) on `device`. Every
// returned tensor is contiguous and owns its memory, so the files are closed on return.
// Shapes are those of ExpectedTensors, e.g. "model.embed_tokens.weight": [vocab, hidden].
// `matrix_dtype`, when given, applies to the linear layers' weight matrices
// (IsMatrixWeight) instead: bfloat16-matmul models load them
// at half the bytes rather than widening the whole checkpoint first. With
// `keep_bfloat16_matrices`, matrices stored as BF16 load as bfloat16 whatever
// `dtype` says: a float32 model that holds them as bfloat16 panels (see
// Linear) then never holds them in float32, even while loading.
WeightMap LoadWeights(const std::string& dir, const ModelConfig& config, at::ScalarType dtype,
                      const at::Device& device,
                      at::ScalarType matrix_dtype = at::ScalarType::Undefined,
                      bool keep_bfloat16_matrices = false);

}  // namespace gritserve
