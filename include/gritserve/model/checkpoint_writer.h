// Writes random-weight checkpoints in the Hugging Face layout, for tests, the demo and the
// benchmarks. Torch-free header; the implementation uses LibTorch's generators.
#pragma once

#include <cstdint>
#include <string>

#include "gritserve/model/config.h"
#include "gritserve/model/safetensors.h"

namespace gritserve {

struct RandomWeightsOptions {
  uint64_t seed = 0;
  DType dtype = DType::kF32;
  // Std of the linear and embedding weights (HF's initializer_range).
  float init_std = 0.02f;
  // Write model-0000i-of-0000N.safetensors + model.safetensors.index.json.
  bool shard = false;
  // Largest shard in bytes (a tensor bigger than this gets a shard of its own);
  // 0 splits the weights into two shards of about equal size.
  int64_t shard_max_bytes = 0;
};

// Writes DIR/config.json (config.ToJsonText(), torch_dtype set from options.dtype),
// DIR/generation_config.json and random weights for ExpectedTensors(config):
//   linear and embedding weights ~ N(0, init_std), norm weights ~ 1 + N(0, 0.1),
//   biases ~ N(0, 0.02)
// so that a missing norm weight or bias changes a model's outputs. Each tensor's values depend
// only on (seed, tensor name), so single-file and sharded checkpoints of one seed hold the same
// weights. Writes tensor by tensor, holding at most about two copies of one tensor in memory.
// Creates DIR if needed; writes no tokenizer. Throws Error(kLoad) on I/O failure.
void WriteRandomCheckpoint(const std::string& dir, const ModelConfig& config,
                           const RandomWeightsOptions& options);

}  // namespace gritserve
