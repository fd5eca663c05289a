// The decoder-only transformer shared by Qwen2, Llama and Mistral. Weights are
// immutable after construction; request state (positions, attention layout, KV
// cache) is passed into Forward. Returns hidden states; heads live elsewhere.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gritserve/kernels/attention.h"
#include "gritserve/kernels/linear.h"
#include "gritserve/model/attention.h"
#include "gritserve/model/config.h"
#include "gritserve/model/weights.h"

namespace gritserve {

class KvCache;

struct ForwardInput {
  at::Tensor ids;        // [B, T] int64
  at::Tensor positions;  // [B, T] int64 RoPE positions
  at::Tensor valid;      // [B, T] bool, false = padding; undefined = all valid
  AttentionSpec attention;
  int64_t num_layers = -1;       // early exit: run only the first N layers (-1: all)
  bool apply_final_norm = true;  // apply model.norm to the returned hidden states
  // Return only each row's last position, [B, 1, H] (a prompt whose next-token
  // logits are all that is wanted): the last layer then finishes attention,
  // MLP and norm for those rows alone. Every position's keys and values are
  // still computed and cached. Not with layer_outputs or early exit.
  bool last_position_only = false;
};

class Decoder {
 public:
  // Takes the HF-named weights (see ExpectedTensors) and fuses q/k/v and
  // gate/up so each layer runs two large matmuls instead of five.
  // `matmul_dtype` kBFloat16 (CPU float32 weights, where Linear::CpuBf16Available)
  // packs every linear layer and the LM head in bfloat16; everything else
  // (embeddings, norms, attention, the KV cache) stays float32.
  // With `quantize` (CPU float32 only; --weights q8|q4) every linear layer and
  // the LM head are quantized in blocks instead (see quant.h); embeddings and
  // norms stay unquantized.
  // The weights are taken from `weights` one layer at a time and packed or
  // quantized as they come, so a checkpoint read through a mapped
  // WeightSource is never held whole in its own precision.
  Decoder(const ModelConfig& config, WeightSource& weights,
          at::ScalarType matmul_dtype = at::kFloat,
          std::optional<quant::Format> quantize = std::nullopt);
  Decoder(const ModelConfig& config, WeightMap weights, at::ScalarType matmul_dtype = at::kFloat,
          std::optional<quant::Format> quantize = std::nullopt);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  // The precision of the matrix products: dtype(), or bfloat16 as asked above.
  at::ScalarType matmul_dtype() const { return matmul_dtype_; }
  at::Device device() const { return device_; }

  // Runs the layers on the new tokens. When `cache` is given, the new keys and
  // values are appended to it and the tokens attend to what it already holds.
  // When `layer_outputs` is given it receives HF-style hidden states: the
  // embeddings, then the residual stream after each layer that ran.
  //   returns [B, T, H]
  at::Tensor Forward(const ForwardInput& input, KvCache* cache,
                     std::vector<at::Tensor>* layer_outputs = nullptr) const;

  // One pass for several independent causal sequences, each [1, T_i] with its
  // own cache (KV-cached decode steps of concurrent generations): the linear
  // layers and the LM head read the weights once for all of them, attention
  // runs per sequence over its own cache. Equals Forward on each alone up to
  // the summation order of the products.
  //   returns [sum T_i, H], the sequences' rows in order; with
  //   `last_positions_only` (as ForwardInput::last_position_only) [#inputs, H]
  at::Tensor ForwardMany(const std::vector<ForwardInput>& inputs,
                         const std::vector<KvCache*>& caches,
                         bool last_positions_only = false) const;

  // Whether the LM head (and a tied embedding table) is held in bfloat16
  // because its float32 values are all bfloat16 numbers: exact, half the bytes.
  bool lm_head_in_bfloat16() const { return lm_head_bf16_.defined(); }
  // Whether the embedding table is held in bfloat16 (its float32 values all
  // being bfloat16 numbers; rows widen exactly on lookup), tied or not.
  bool embeddings_in_bfloat16() const { return embed_tokens_.scalar_type() == at::kBFloat16; }

  // How many of the layers' weight matrices are held as bfloat16 panels for
  // float32 products, their values being bfloat16 numbers (see Linear), of
  // how many in all (four per layer: fused q/k/v, o, fused gate/up, down).
  std::pair<int64_t, int64_t> layer_matrices_in_bfloat16() const;

  // The block format of the layers and LM head, if quantized.
  std::optional<quant::Format> weights_format() const { return weights_; }
  // Bytes of quantized weights held (layers and LM head; 0 when not quantized).
  int64_t quantized_bytes() const;

  // LM head on selected hidden states only.  hidden: [N, H] -> [N, V] float32
  at::Tensor Logits(const at::Tensor& hidden) const;

  // Moves RoPE-rotated keys by `delta` positions (exact: R(p+d) = R(d)R(p)).
  //   keys: [..., T, D] -> same shape
  at::Tensor RotateKeys(const at::Tensor& keys, int64_t delta) const;

  // Copies stored keys and values into KV cache slots (KvCache::Slots), the
  // keys moved by `delta` positions on the way (as RotateKeys). Sources may be
  // in another dtype or on the host; they are converted.
  //   k_src[l], v_src[l]: [Hkv, T, D]; k_dst[l], v_dst[l]: [1, Hkv, T, D]
  void PlaceKv(const std::vector<at::Tensor>& k_dst, const std::vector<at::Tensor>& k_src,
               const std::vector<at::Tensor>& v_dst, const std::vector<at::Tensor>& v_src,
               int64_t delta) const;

  // A fresh cache sized for this model.
  KvCache NewCache(int64_t batch) const;

  // What one Forward of `batch` rows of `t` new tokens after `past` cached
  // ones allocates at its peak, beyond the weights and any cache it is given
  // (activations, attention blocks, the returned hidden states), for a model
  // computing in float32 or less. An estimate for admission, not a bound.
  static int64_t ForwardBytes(const ModelConfig& config, int64_t batch, int64_t t, int64_t past);
  // Bytes of keys and values for `tokens` tokens in every layer (float32).
  static int64_t KvBytes(const ModelConfig& config, int64_t tokens);

 private:
  struct Layer {
    at::Tensor input_layernorm;           // [H]
    Linear qkv_proj;                      // H -> (Hq + 2 Hkv) D, q/k/v fused
    Linear o_proj;                        // Hq D -> H
    at::Tensor post_attention_layernorm;  // [H]
    Linear gate_up_proj;                  // H -> 2 I, gate/up fused
    Linear down_proj;                     // I -> H
  };

  // Sequences whose rows lie one after another in a forward's activations.
  struct Segment {
    int64_t t;                    // tokens per row of the segment's batch
    kernels::AttentionMask mask;  // B_i x T_i x S_i, with the sliding window if any layer has one
    KvCache* cache;               // or nullptr
    // Without the window, for the layers before window_from_layer when only
    // some layers have it.
    std::optional<kernels::AttentionMask> full_mask = std::nullopt;
  };
  // A layer's projections of normed rows x [B*T, H], RoPE applied.
  struct Qkv {
    at::Tensor q;        // [B, Hq, T, D]
    at::Tensor k, v;     // [B, Hkv, T, D], views into the projection output
    double q_scale = 1;  // what the scores still need multiplying by
  };
  Qkv ProjectQkv(const Layer& layer, const at::Tensor& x, const at::Tensor& cos,
                 const at::Tensor& sin) const;
  // The mask of a segment for layer `layer_index` (with or without the window).
  const kernels::AttentionMask& LayerMask(const Segment& seg, int64_t layer_index) const;
  // Whether Layers runs these segments through LayersInChunks: one long
  // sequence of batch 1, no layer outputs asked for.
  bool RunsInChunks(const std::vector<Segment>& segments,
                    const std::vector<at::Tensor>* layer_outputs) const;
  // Layers for one long sequence, each layer in chunks of rows: every
  // token's keys and values from the layer's input, then per chunk its
  // queries' attention and its MLP, added to the residual stream x [T, H] in
  // place. Equals Layers up to summation order.  -> [T, H], or [1, H] with last_only
  at::Tensor LayersInChunks(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                            const Segment& seg, int64_t n_layers, bool final_norm,
                            bool last_only) const;
  Segment MakeSegment(const ForwardInput& input, int64_t past, const at::Tensor& key_valid,
                      KvCache* cache) const;
  // cos, sin: [B, T, D/2] over all rows (B = 1 when there are several segments).
  // Keys and values of every row go to the caches; with `last_only` the
  // output holds each batch row's last position only.
  //   x: [N, H] -> [N, H], or [sum_i B_i, H] with last_only
  at::Tensor Attention(const Layer& layer, const at::Tensor& x, const at::Tensor& cos,
                       const at::Tensor& sin, const std::vector<Segment>& segments,
                       int64_t layer_index, bool last_only) const;
  // The first n_layers layers over the residual stream x [N, H] (updated in
  // place by the fused kernels), then model.norm if asked; layer outputs as
  // in Forward, shaped `output_shape`. With `last_only` the last layer keeps
  // only each batch row's last position.  -> [N, H] or [sum_i B_i, H]
  at::Tensor Layers(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                    const std::vector<Segment>& segments, int64_t n_layers, bool final_norm,
                    bool last_only, std::vector<at::Tensor>* layer_outputs,
                    at::IntArrayRef output_shape) const;
  // x: [N, H] -> [N, H], in chunks of rows for long inputs
  at::Tensor Mlp(const Layer& layer, const at::Tensor& x) const;
  at::Tensor MlpRows(const Layer& layer, const at::Tensor& x) const;
  // The rows of each batch row's last position, in order.  x: [N, H] -> [R, H]
  static at::Tensor LastRows(const at::Tensor& x, const std::vector<Segment>& segments);
  // Embedding rows in the compute dtype.  ids: [...] -> [..., H]
  at::Tensor Embed(const at::Tensor& ids) const;
  // x += delta (where defined), then returns RMSNorm(x) * weight. The fused CPU
  // kernel updates x in place; the ATen path rebinds x to a new tensor.
  at::Tensor AddRmsNorm(at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight) const;
  // Which keys T new tokens after `past` stored ones see (B x T x S);
  // causal attention keeps to the sliding window when `window`. A one-token
  // step with a cache reads the cache's additive flags (no mask is built).
  kernels::AttentionMask BuildMask(const ForwardInput& input, int64_t past,
                                   const at::Tensor& key_valid, bool window,
                                   const KvCache* cache) const;
  // cos, sin: [B, T, D/2] for positions [B, T] (each frequency once),
  // computed from the angles.
  std::pair<at::Tensor, at::Tensor> RopeAngles(const at::Tensor& positions) const;
  // The same, looked up in rope_cos_/rope_sin_ (computed past their end).
  std::pair<at::Tensor, at::Tensor> RopeTables(const at::Tensor& positions) const;

  ModelConfig config_;
  at::ScalarType dtype_;
  at::ScalarType matmul_dtype_;
  at::Device device_;
  std::optional<quant::Format> weights_;
  kernels::AttentionBackend attention_;
  bool fused_cpu_ = false;          // norm, RoPE, SiLU, softmax as fused CPU float32 kernels
  at::Tensor embed_tokens_;         // [V, H] (bfloat16 when its values are bfloat16 numbers)
  at::Tensor norm_;                 // [H]
  Linear lm_head_;                  // H -> V (the embedding matrix when tied)
  at::Tensor lm_head_bf16_;         // [V, H] instead of lm_head_, for bfloat16-valued heads
  at::Tensor inv_freq_;             // [D / 2] float32
  at::Tensor rope_cos_, rope_sin_;  // [P, D / 2] in dtype_: RopeAngles of positions [0, P)
  std::vector<Layer> layers_;
};

}  // namespace gritserve
