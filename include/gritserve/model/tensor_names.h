// The Hugging Face names of a decoder checkpoint's tensors. ExpectedTensors,
// the weight loader, the checkpoint writer and the Decoder must spell them
// identically (loading is strict: a name spelled two ways is one tensor
// reported missing and another unexpected), so they are spelled only here.
// Torch-free so that every layer may include it.
#pragma once

#include <cstdint>
#include <string>

namespace gritserve {
namespace tensor_names {

inline constexpr char kEmbedTokens[] = "model.embed_tokens.weight";
inline constexpr char kFinalNorm[] = "model.norm.weight";
inline constexpr char kLmHead[] = "lm_head.weight";

// A layer's modules: what stands between LayerNames' prefix and ".weight" / ".bias".
inline constexpr char kInputLayernorm[] = "input_layernorm";
inline constexpr char kPostAttentionLayernorm[] = "post_attention_layernorm";
inline constexpr char kQProj[] = "self_attn.q_proj";
inline constexpr char kKProj[] = "self_attn.k_proj";
inline constexpr char kVProj[] = "self_attn.v_proj";
inline constexpr char kOProj[] = "self_attn.o_proj";
inline constexpr char kGateProj[] = "mlp.gate_proj";
inline constexpr char kUpProj[] = "mlp.up_proj";
inline constexpr char kDownProj[] = "mlp.down_proj";

// The names of one decoder layer's tensors:
// LayerNames(3).Weight(kQProj) is "model.layers.3.self_attn.q_proj.weight".
class LayerNames {
 public:
  explicit LayerNames(int64_t index);
  std::string Weight(const char* module) const;
  std::string Bias(const char* module) const;

 private:
  std::string prefix_;
};

// RMSNorm weights: the layers' two and the final one.
bool IsNormWeight(const std::string& name);
bool IsBias(const std::string& name);
// A buffer that old exports saved beside the weights; nothing reads it, since
// RoPE's inverse frequencies are recomputed from rope_theta.
bool IsRotaryInvFreq(const std::string& name);

}  // namespace tensor_names

// Whether `name` is a linear layer's weight matrix ("*_proj.weight", "lm_head.weight"), in
// the sense of LoadWeights' matrix_dtype.
bool IsMatrixWeight(const std::string& name);

}  // namespace gritserve
