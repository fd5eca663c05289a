// Model hyper-parameters read from a Hugging Face config.json (HF key names).
// Torch-free so that every layer may include it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gritserve {

enum class Architecture { kQwen2, kLlama, kMistral };

// "llama3"-type RoPE frequency scaling (Llama-3.1 and later); absent for most models.
struct RopeScaling {
  std::string type;  // "llama3" or "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture arch = Architecture::kQwen2;
  std::string architecture_name;  // as written in config.json, e.g. "Qwen2ForCausalLM"
  std::string model_type;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads when absent
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;

  bool qkv_bias = false;  // Qwen2: always; Llama: attention_bias; Mistral: never
  bool o_bias = false;    // Llama attention_bias only
  bool mlp_bias = false;  // Llama mlp_bias
  bool tie_word_embeddings = false;
  std::optional<int64_t> sliding_window;  // set only when the model really uses one
  // Layers before this one attend without the window (Qwen2's
  // max_window_layers, as Hugging Face applies it); 0: every layer has it.
  int64_t window_from_layer = 0;

  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json and generation_config.json merged
  std::string torch_dtype;             // as stored, informational

  // Parses config.json text. Throws Error(kLoad) naming a missing/ill-typed key or
  // an unsupported architecture (listing the supported ones).
  static ModelConfig FromJsonText(const std::string& text);
  // Reads DIR/config.json and, when present, DIR/generation_config.json (eos ids).
  static ModelConfig FromDirectory(const std::string& dir);
  // Writes HF-compatible config.json text (used by the checkpoint generator).
  std::string ToJsonText() const;

  int64_t NumParameters() const;
};

// The tensors a checkpoint of this config must contain, with HF names and shapes.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

std::vector<std::string> SupportedArchitectures();

}  // namespace gritserve
