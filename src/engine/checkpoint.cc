#include "gritserve/engine/checkpoint.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "gritserve/common/error.h"
#include "gritserve/model/checkpoint_writer.h"
#include "gritserve/tokenizer/tokenizer.h"
#include "gritserve/tokenizer/tokenizer_writer.h"

namespace gritserve {
namespace {

ModelConfig Shape(Architecture arch, const char* name, int64_t hidden, int64_t layers,
                  int64_t heads, int64_t kv_heads, int64_t inter) {
  ModelConfig c;
  c.arch = arch;
  c.architecture_name = name;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = inter;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6;
  switch (arch) {
    case Architecture::kQwen2:
      c.model_type = "qwen2";
      c.qkv_bias = true;
      c.tie_word_embeddings = true;
      c.rope_theta = 1e6;
      break;
    case Architecture::kLlama:
      c.model_type = "llama";
      c.rope_theta = 500000.0;
      c.rms_norm_eps = 1e-5;
      break;
    case Architecture::kMistral:
      c.model_type = "mistral";
      c.rope_theta = 10000.0;
      c.rms_norm_eps = 1e-5;
      break;
  }
  return c;
}

}  // namespace

std::vector<std::string> CheckpointPresetNames() {
  return {"tiny", "tiny-llama", "tiny-mistral", "demo", "qwen2.5-0.5b", "gritlm-7b"};
}

CheckpointSpec CheckpointPreset(const std::string& name) {
  CheckpointSpec s;
  if (name == "tiny") {
    s.config = Shape(Architecture::kQwen2, "Qwen2ForCausalLM", 64, 2, 4, 2, 128);
  } else if (name == "tiny-llama") {
    s.config = Shape(Architecture::kLlama, "LlamaForCausalLM", 64, 2, 4, 2, 160);
    s.tokenizer = "sentencepiece";
    s.tokenizer_size = 400;
  } else if (name == "tiny-mistral") {
    s.config = Shape(Architecture::kMistral, "MistralForCausalLM", 64, 2, 4, 1, 160);
    s.config.sliding_window = 4096;
    s.tokenizer = "sentencepiece";
    s.tokenizer_size = 400;
  } else if (name == "demo") {
    s.config = Shape(Architecture::kQwen2, "Qwen2ForCausalLM", 256, 4, 8, 2, 688);
    s.tokenizer_size = 2000;
  } else if (name == "qwen2.5-0.5b") {
    s.config = Shape(Architecture::kQwen2, "Qwen2ForCausalLM", 896, 24, 14, 2, 4864);
    s.config.vocab_size = 151936;
    s.config.max_position_embeddings = 32768;
    s.tokenizer_size = 2000;
  } else if (name == "gritlm-7b") {
    // GritLM-7B is Mistral-7B-v0.1 in shape: 7.24B parameters, 14.5 GB in bfloat16.
    s.config = Shape(Architecture::kMistral, "MistralForCausalLM", 4096, 32, 32, 8, 14336);
    s.config.vocab_size = 32000;
    s.config.max_position_embeddings = 32768;
    s.config.sliding_window = 4096;
    s.tokenizer = "sentencepiece";
    s.tokenizer_size = 2000;
  } else {
    std::string names;
    for (const auto& n : CheckpointPresetNames()) names += (names.empty() ? "" : ", ") + n;
    throw InvalidRequest("unknown checkpoint preset '" + name + "'; known: " + names);
  }
  return s;
}

void WriteCheckpoint(const std::string& dir, const CheckpointSpec& spec) {
  std::filesystem::create_directories(dir);
  int32_t tok_size = 0;
  if (spec.tokenizer == "bpe") {
    tok_size = WriteDemoBpeTokenizer(dir, spec.tokenizer_size);
  } else if (spec.tokenizer == "sentencepiece") {
    tok_size = WriteDemoSentencePieceTokenizer(dir, spec.tokenizer_size);
  } else {
    throw InvalidRequest("unknown tokenizer kind '" + spec.tokenizer +
                         "' (expected bpe or sentencepiece)");
  }
  ModelConfig config = spec.config;
  if (config.vocab_size == 0) config.vocab_size = tok_size;
  if (config.vocab_size < tok_size) {
    throw InvalidRequest("vocab_size " + std::to_string(config.vocab_size) +
                         " is smaller than the tokenizer's " + std::to_string(tok_size));
  }
  // The model's special ids are whatever the tokenizer that was just written says.
  auto tokenizer = Tokenizer::FromDirectory(dir);
  config.bos_token_id.reset();
  if (auto bos = tokenizer->bos_id()) config.bos_token_id = *bos;
  config.eos_token_ids.clear();
  if (auto eos = tokenizer->eos_id()) config.eos_token_ids.push_back(*eos);
  RandomWeightsOptions w;
  w.seed = spec.seed;
  w.dtype = spec.dtype;
  w.shard = spec.shard;
  WriteRandomCheckpoint(dir, config, w);
  spdlog::info("wrote a random-weight {} checkpoint ({:.1f}M parameters, {} tokenizer) to {}",
               config.architecture_name, config.NumParameters() / 1e6, spec.tokenizer, dir);
}

}  // namespace gritserve
