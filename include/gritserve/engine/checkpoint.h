// Generated checkpoints (random weights plus a trained tiny tokenizer) in the
// exact Hugging Face layout: used by the tests, the benchmarks and the server's
// demo default when no model directory is given.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gritserve/model/config.h"
#include "gritserve/model/safetensors.h"

namespace gritserve {

struct CheckpointSpec {
  ModelConfig config;             // vocab_size 0: the tokenizer's size
  std::string tokenizer = "bpe";  // "bpe" (tokenizer.json) or "sentencepiece" (tokenizer.model)
  int tokenizer_size = 500;       // BPE merges, or the sentencepiece vocabulary size
  DType dtype = DType::kF32;
  uint64_t seed = 0;
  bool shard = false;
};

// Named shapes: "tiny" (Qwen2, hidden 64, 2 layers), "tiny-llama" (Llama, no bias,
// untied head, sentencepiece), "tiny-mistral", "demo" (a small Qwen2 for the demo
// server), "qwen2.5-0.5b" (the exact Qwen2.5-0.5B shape). Throws for others.
CheckpointSpec CheckpointPreset(const std::string& name);
std::vector<std::string> CheckpointPresetNames();

// Writes config.json, generation_config.json, weights and tokenizer files to dir.
void WriteCheckpoint(const std::string& dir, const CheckpointSpec& spec);

}  // namespace gritserve
