#include "gritserve/model/decoder.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "gritserve/cache/kv_cache.h"
#include "gritserve/common/error.h"
#include "gritserve/kernels/attention.h"
#include "gritserve/kernels/cpu_kernels.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/host_memory.h"
#include "gritserve/model/tensor_names.h"

namespace gritserve {
namespace {

// Large finite negative instead of -inf: a fully masked row (padding) then
// yields a harmless uniform softmax rather than NaN (whose K/V would poison
// every later query that masks it out: NaN + mask is NaN). float16 cannot hold
// -1e30 (masked_fill throws), and its -65504 would overflow once a negative
// score is added, so it gets -2^15.
float MaskedValue(at::ScalarType dtype) { return dtype == at::kHalf ? -32768.0f : -1e30f; }

// Additive masks up to this many values ([B, T, S]) are materialised once
// per forward pass and shared by its layers.
constexpr int64_t kWholeMaskElements = int64_t{4} << 20;

// Rows of the MLP run at once (see Decoder::Mlp).
constexpr int64_t kMlpRows = 2048;

// A single sequence longer than this runs each layer in chunks of rows
// (Decoder::LayersInChunks), so that only the residual stream and one
// layer's keys and values are held for every token.
constexpr int64_t kChunkedLayersFrom = 8192;
constexpr int64_t kLayerChunkRows = 512;

// RoPE's cos and sin are tabulated at load for positions below this (and the
// model's context), so a step only looks its rows up: 32,768 x D/2 of each,
// 8 MB for head_dim 64. Positions past the table are computed per pass.
constexpr int64_t kRopeTablePositions = 32768;

at::Tensor TakeOptional(WeightSource& w, const std::string& name, bool present) {
  return present ? w.Take(name) : at::Tensor();
}

at::Tensor CatOptional(const std::vector<at::Tensor>& parts) {
  if (!parts[0].defined()) return at::Tensor();
  return at::cat(parts, 0).contiguous();
}

// x: [..., D] -> [..., D]
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + RotateHalf(x) * sin;
}

// [D / 2] inverse frequencies, with the rope_scaling variants HF applies.
at::Tensor InverseFrequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / c.head_dim);
    if (c.rope_scaling) {
      const RopeScaling& s = *c.rope_scaling;
      if (s.type == "linear") {
        f /= s.factor;
      } else if (s.type == "llama3") {
        const double old_len = static_cast<double>(s.original_max_position_embeddings);
        const double low_wavelen = old_len / s.low_freq_factor;
        const double high_wavelen = old_len / s.high_freq_factor;
        const double wavelen = 2 * M_PI / f;
        if (wavelen > low_wavelen) {
          f /= s.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth =
              (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1 - smooth) * f / s.factor + smooth * f;
        }
      }
    }
    inv[i] = static_cast<float>(f);
  }
  return at::tensor(inv, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

// The source lives until this delegation completes (a temporary of the
// initializer's full-expression).
Decoder::Decoder(const ModelConfig& config, WeightMap weights, at::ScalarType matmul_dtype,
                 std::optional<quant::Format> quantize)
    : Decoder(config, *std::make_unique<WeightSource>(std::move(weights)), matmul_dtype, quantize) {
}

Decoder::Decoder(const ModelConfig& config, WeightSource& weights, at::ScalarType matmul_dtype,
                 std::optional<quant::Format> quantize)
    : config_(config), dtype_(at::kFloat), device_(at::kCPU), weights_(quantize) {
  namespace tn = tensor_names;
  embed_tokens_ = weights.Take(tn::kEmbedTokens);
  dtype_ = embed_tokens_.scalar_type();
  const bool bf16 = matmul_dtype == at::kBFloat16 && dtype_ == at::kFloat;
  matmul_dtype_ = bf16 ? at::kBFloat16 : dtype_;
  const at::ScalarType packed = bf16 ? at::kBFloat16 : at::kFloat;
  device_ = embed_tokens_.device();
  attention_ = kernels::AttentionBackend::For(device_, dtype_);
  fused_cpu_ = device_.is_cpu() && dtype_ == at::kFloat && kernels::Dispatch::Current().fused;
  norm_ = weights.Take(tn::kFinalNorm);
  at::Tensor head = config.tie_word_embeddings ? embed_tokens_ : weights.Take(tn::kLmHead);
  if (weights_ && !fused_cpu_) {
    throw LoadError(std::string("--weights ") + quant::FormatName(*weights_) +
                    " runs on CPU in float32 only (not with --device cuda, --dtype bfloat16/"
                    "float16 or GRITSERVE_CPU_KERNELS=aten)");
  }
  const bool bf16_valued =
      fused_cpu_ && (head.scalar_type() == at::kBFloat16 || cpu_kernels::HoldsBfloat16Values(head));
  if (weights_) {
    // The head gets its own quantized copy; a tied embedding table stays
    // unquantized (held in bfloat16 where that is exact).
    lm_head_ = Linear(head, at::Tensor(), *weights_, bf16);
    if (config.tie_word_embeddings && bf16_valued && head.scalar_type() != at::kBFloat16) {
      embed_tokens_ = StreamedWeightCopy(head, at::kBFloat16);
    }
  } else if (fused_cpu_ && !bf16 && bf16_valued) {
    // A bfloat16 checkpoint computed in float32: the head's values are
    // bfloat16 numbers, so a bfloat16 copy holds them exactly at half the
    // bytes that every generated token streams (and, tied, the embedding
    // table shares it: rows widen exactly on lookup). An untied head may
    // arrive in bfloat16 already (LoadWeights' keep_bfloat16_matrices).
    // With bfloat16 products the head is packed for oneDNN below instead:
    // its native bfloat16 products decode faster than this float32 stream.
    lm_head_bf16_ =
        head.scalar_type() == at::kBFloat16 ? head : StreamedWeightCopy(head, at::kBFloat16);
    if (config.tie_word_embeddings) embed_tokens_ = lm_head_bf16_;
  } else {
    // With tied embeddings the head is the embedding matrix itself: used in
    // place, since a packed copy would cost its full size (544 MB for
    // Qwen2.5-0.5B). In bfloat16 the head gets its own half-size copy: decode
    // reads it every step.
    lm_head_ = Linear(head, Linear::Layout::kOutIn, at::Tensor(),
                      /*pack=*/bf16 || !config.tie_word_embeddings, packed);
  }
  if (fused_cpu_ && embed_tokens_.scalar_type() == at::kFloat &&
      cpu_kernels::HoldsBfloat16Values(embed_tokens_)) {
    // A table of bfloat16 numbers (a bfloat16 checkpoint) not yet held in
    // bfloat16 (untied, or tied beside a packed head) likewise: rows widen
    // exactly on lookup, and the table takes half the memory.
    embed_tokens_ = StreamedWeightCopy(embed_tokens_, at::kBFloat16);
  }
  head = at::Tensor();  // a float32 table no one holds now is freed before the layers pack
  inv_freq_ = InverseFrequencies(config).to(device_);
  const int64_t table = std::min(config.max_position_embeddings, kRopeTablePositions);
  auto [cos, sin] = RopeAngles(at::arange(table, at::TensorOptions().dtype(at::kLong))
                                   .view({1, table})
                                   .to(device_));  // [1, P, D/2]
  rope_cos_ = cos[0];                              // [P, D/2]
  rope_sin_ = sin[0];

  // [out, in] weight and [out] (or no) bias -> a packed or quantized layer.
  auto linear = [&](const at::Tensor& w, at::Tensor b) {
    return weights_ ? Linear(w, std::move(b), *weights_, bf16)
                    : Linear(w, Linear::Layout::kOutIn, std::move(b), /*pack=*/true, packed);
  };
  layers_.resize(config.num_hidden_layers);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const tn::LayerNames names(i);
    Layer& l = layers_[i];
    l.input_layernorm = weights.Take(names.Weight(tn::kInputLayernorm));
    l.post_attention_layernorm = weights.Take(names.Weight(tn::kPostAttentionLayernorm));
    l.qkv_proj = linear(
        at::cat({weights.Take(names.Weight(tn::kQProj)), weights.Take(names.Weight(tn::kKProj)),
                 weights.Take(names.Weight(tn::kVProj))},
                0),
        CatOptional({TakeOptional(weights, names.Bias(tn::kQProj), config.qkv_bias),
                     TakeOptional(weights, names.Bias(tn::kKProj), config.qkv_bias),
                     TakeOptional(weights, names.Bias(tn::kVProj), config.qkv_bias)}));
    l.o_proj = linear(weights.Take(names.Weight(tn::kOProj)),
                      TakeOptional(weights, names.Bias(tn::kOProj), config.o_bias));
    l.gate_up_proj = linear(
        at::cat(
            {weights.Take(names.Weight(tn::kGateProj)), weights.Take(names.Weight(tn::kUpProj))},
            0),
        CatOptional({TakeOptional(weights, names.Bias(tn::kGateProj), config.mlp_bias),
                     TakeOptional(weights, names.Bias(tn::kUpProj), config.mlp_bias)}));
    l.down_proj = linear(weights.Take(names.Weight(tn::kDownProj)),
                         TakeOptional(weights, names.Bias(tn::kDownProj), config.mlp_bias));
  }
}

std::pair<int64_t, int64_t> Decoder::layer_matrices_in_bfloat16() const {
  int64_t held = 0;
  for (const Layer& l : layers_) {
    for (const Linear* m : {&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj}) {
      held += m->bfloat16_values() ? 1 : 0;
    }
  }
  return {held, 4 * static_cast<int64_t>(layers_.size())};
}

int64_t Decoder::quantized_bytes() const {
  int64_t bytes = lm_head_.quantized() != nullptr ? lm_head_.quantized()->bytes() : 0;
  for (const Layer& l : layers_) {
    for (const Linear* m : {&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj}) {
      if (m->quantized() != nullptr) bytes += m->quantized()->bytes();
    }
  }
  return bytes;
}

KvCache Decoder::NewCache(int64_t batch) const {
  return KvCache(config_.num_hidden_layers, batch, config_.num_key_value_heads, config_.head_dim,
                 dtype_, device_, MaskedValue(dtype_));
}

int64_t Decoder::ForwardBytes(const ModelConfig& c, int64_t batch, int64_t t, int64_t past) {
  constexpr int64_t kBytes = 4;  // float32 activations
  const int64_t s = past + t, hq = c.num_attention_heads, h = c.hidden_size;
  const int64_t qkv = (hq + 2 * c.num_key_value_heads) * c.head_dim;
  // Rows whose temporaries exist at once, and what is held for every token:
  // a long single sequence runs in chunks (LayersInChunks) and keeps the
  // residual stream and one layer's keys and values.
  const bool chunked = batch == 1 && t > kChunkedLayersFrom;
  const int64_t m = chunked ? kLayerChunkRows : batch * t;
  const int64_t held = chunked ? t * (h + 2 * c.num_key_value_heads * c.head_dim) : 0;
  // Live across a layer: the residual stream, the pending block output, the
  // normed input, the fused projection, q, the attention output, the output
  // projection; then the returned hidden states.
  const int64_t rows = m * (7 * h + qkv + 2 * hq * c.head_dim);
  const int64_t mlp = std::min(m, kMlpRows) * 3 * c.intermediate_size + m * h;
  // One block of scores and its softmax (on the paths that hold scores), and
  // the mask shared by the layers.
  const int64_t queries = chunked ? m : t;
  const int64_t block = kernels::AttentionBackend().QueryBlock(batch, hq, queries, s, false);
  const int64_t scores = 2 * batch * hq * block * s;
  const int64_t mask = std::min(batch * t * s, kWholeMaskElements) + 4 * batch * s;
  return kBytes * (held + rows + mlp + scores + mask);
}

int64_t Decoder::KvBytes(const ModelConfig& c, int64_t tokens) {
  return 2 * 4 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * tokens;
}

at::Tensor Decoder::AddRmsNorm(at::Tensor& x, const at::Tensor& delta,
                               const at::Tensor& weight) const {
  const float eps = static_cast<float>(config_.rms_norm_eps);
  if (fused_cpu_) return cpu_kernels::AddRmsNorm(x, delta, weight, eps);
  if (delta.defined()) x = x + delta;
  // Statistics in float32 even when computing in half precision, as HF does.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return weight * y.to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> Decoder::RopeAngles(const at::Tensor& positions) const {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq_;  // [B, T, D/2]
  return {freqs.cos().to(dtype_), freqs.sin().to(dtype_)};
}

std::pair<at::Tensor, at::Tensor> Decoder::RopeTables(const at::Tensor& positions) const {
  const at::Tensor p = positions.to(at::kCPU).to(at::kLong).contiguous();  // [B, T]
  const int64_t* pos = p.data_ptr<int64_t>();
  const int64_t n = p.numel(), rows = rope_cos_.size(0);
  if (!std::all_of(pos, pos + n, [rows](int64_t q) { return q >= 0 && q < rows; })) {
    return RopeAngles(positions.to(device_));
  }
  const std::vector<int64_t> shape = {p.size(0), p.size(1), rope_cos_.size(1)};  // [B, T, D/2]
  if (n == 1) {  // a decode step: views of one row, nothing computed
    return {rope_cos_.narrow(0, pos[0], 1).view(shape), rope_sin_.narrow(0, pos[0], 1).view(shape)};
  }
  const at::Tensor idx = p.view({n}).to(device_);  // [B T]
  return {rope_cos_.index_select(0, idx).view(shape), rope_sin_.index_select(0, idx).view(shape)};
}

at::Tensor Decoder::RotateKeys(const at::Tensor& keys, int64_t delta) const {
  if (delta == 0) return keys;
  at::Tensor freqs = inv_freq_ * static_cast<float>(delta);  // [D/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);              // [D]
  // Angles are computed in float32 from the exact integer delta, so the
  // rotation matches computing the keys at the new positions directly.
  at::Tensor k = keys.to(at::kFloat);
  return ApplyRope(k, emb.cos(), emb.sin()).to(keys.scalar_type());
}

void Decoder::PlaceKv(const std::vector<at::Tensor>& k_dst, const std::vector<at::Tensor>& k_src,
                      const std::vector<at::Tensor>& v_dst, const std::vector<at::Tensor>& v_src,
                      int64_t delta) const {
  const size_t layers = k_src.size();
  if (k_dst.size() != layers || v_src.size() != layers || v_dst.size() != layers) {
    throw Error(ErrorKind::kInternal, "PlaceKv: layer counts differ");
  }
  std::vector<at::Tensor> kd, vd;  // [Hkv, T, D] cache slices
  for (size_t l = 0; l < layers; ++l) {
    kd.push_back(k_dst[l].select(0, 0));
    vd.push_back(v_dst[l].select(0, 0));
  }
  auto all_float_cpu = [](const std::vector<at::Tensor>& ts) {
    return std::all_of(ts.begin(), ts.end(),
                       [](const at::Tensor& t) { return cpu_kernels::Applies(t); });
  };
  if (fused_cpu_ && all_float_cpu(k_src) && all_float_cpu(v_src)) {
    // Same float32 angles as RotateKeys; delta 0 rotates by cos 1, sin 0: an exact copy.
    at::Tensor freqs = inv_freq_ * static_cast<float>(delta);  // [D/2]
    cpu_kernels::PlaceKv(kd, k_src, vd, v_src, freqs.cos(), freqs.sin());
    return;
  }
  // All layers rotated in one pass: op overhead, not bytes, dominates.
  at::Tensor rotated;  // [L, Hkv, T, D]
  if (delta != 0) {
    std::vector<at::Tensor> keys;  // on the model's device (from page-locked memory on a GPU)
    for (const at::Tensor& k : k_src) keys.push_back(k.to(device_));
    rotated = RotateKeys(at::stack(keys).to(dtype_), delta);
  }
  for (size_t l = 0; l < layers; ++l) {
    kd[l].copy_(delta != 0 ? rotated[static_cast<int64_t>(l)] : k_src[l]);
    vd[l].copy_(v_src[l]);
  }
}

Decoder::Segment Decoder::MakeSegment(const ForwardInput& in, int64_t past,
                                      const at::Tensor& key_valid, KvCache* cache) const {
  const bool windowed =
      config_.sliding_window && config_.window_from_layer < config_.num_hidden_layers;
  Segment seg{in.ids.size(1), BuildMask(in, past, key_valid, windowed, cache), cache};
  if (windowed && config_.window_from_layer > 0 && in.attention.mode == AttentionMode::kCausal) {
    seg.full_mask = BuildMask(in, past, key_valid, false, cache);
  }
  return seg;
}

kernels::AttentionMask Decoder::BuildMask(const ForwardInput& in, int64_t past,
                                          const at::Tensor& key_valid, bool window,
                                          const KvCache* cache) const {
  const int64_t t = in.ids.size(1), s = past + t;
  if (t == 1 && in.attention.mode == AttentionMode::kCausal) {
    // A decode step sees every stored valid key (from the window's start):
    // the additive mask is the validity flags, with no index arithmetic.
    const int64_t lo = window ? std::max<int64_t>(0, s - *config_.sliding_window) : 0;
    if (cache != nullptr && lo == 0) {
      return kernels::AttentionMask::Dense(cache->AdditiveWith(1).unsqueeze(1));  // [B, 1, S]
    }
    const float masked = MaskedValue(dtype_);
    at::Tensor mask = at::zeros({key_valid.size(0), 1, s}, key_valid.options().dtype(dtype_))
                          .masked_fill_(key_valid.logical_not().unsqueeze(1), masked);  // [B, 1, S]
    if (lo > 0) mask.narrow(2, 0, lo).fill_(masked);
    return kernels::AttentionMask::Dense(mask);
  }
  // Keys [lo, hi) of each new token (at sequence index past + i).
  std::vector<int64_t> lo(t, 0), hi(t, s);
  switch (in.attention.mode) {
    case AttentionMode::kCausal:
      for (int64_t i = 0; i < t; ++i) {
        hi[i] = past + i + 1;
        if (window) lo[i] = std::max<int64_t>(0, past + i + 1 - *config_.sliding_window);
      }
      break;
    case AttentionMode::kBidirectional:
      break;
    case AttentionMode::kBlocks: {
      // Within its block a token sees all of it (bidirectional) or up to
      // itself (causal); a block that sees_previous also sees every token
      // before the block.
      int64_t start = 0;
      for (const AttentionBlock& blk : in.attention.blocks) {
        const int64_t end = start + blk.length;
        for (int64_t p = std::max(start, past); p < std::min(end, s); ++p) {
          lo[p - past] = blk.sees_previous ? 0 : start;
          hi[p - past] = blk.bidirectional ? end : p + 1;
        }
        start = end;
      }
      if (start != s) {
        throw Error(ErrorKind::kInternal, "attention blocks cover " + std::to_string(start) +
                                              " tokens, sequence has " + std::to_string(s));
      }
      break;
    }
  }
  kernels::AttentionMask mask(at::tensor(lo, at::kLong).to(device_),
                              at::tensor(hi, at::kLong).to(device_), key_valid.to(at::kBool),
                              dtype_, MaskedValue(dtype_));
  // Prompt-sized masks are built once for all layers; long inputs' masks
  // are built per block of query rows, in each layer, and never whole.
  mask.MaterialiseIfSmall(kWholeMaskElements);
  return mask;
}

Decoder::Qkv Decoder::ProjectQkv(const Layer& layer, const at::Tensor& x, const at::Tensor& cos,
                                 const at::Tensor& sin) const {
  const int64_t b = cos.size(0), t = cos.size(1);
  const int64_t hq = config_.num_attention_heads, hkv = config_.num_key_value_heads;
  const int64_t d = config_.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor qkv = layer.qkv_proj(x);  // [B*T, (Hq + 2 Hkv) D]
  Qkv out;
  out.k = qkv.narrow(1, hq * d, hkv * d).view({b, t, hkv, d}).transpose(1, 2);
  out.v = qkv.narrow(1, (hq + hkv) * d, hkv * d).view({b, t, hkv, d}).transpose(1, 2);
  if (fused_cpu_) {
    // Keys rotated in place inside qkv (k views them); q comes back scaled.
    out.q = cpu_kernels::RopeQk(qkv, cos, sin, b, hq, hkv, d, static_cast<float>(scale));
  } else {
    at::Tensor c = at::cat({cos, cos}, -1).unsqueeze(1);  // [B, 1, T, D]
    at::Tensor sn = at::cat({sin, sin}, -1).unsqueeze(1);
    out.q = ApplyRope(qkv.narrow(1, 0, hq * d).view({b, t, hq, d}).transpose(1, 2), c, sn);
    out.k = ApplyRope(out.k, c, sn);  // [B, Hkv, T, D]
    out.q_scale = scale;
  }
  return out;
}

const kernels::AttentionMask& Decoder::LayerMask(const Segment& seg, int64_t layer_index) const {
  return seg.full_mask && layer_index < config_.window_from_layer ? *seg.full_mask : seg.mask;
}

at::Tensor Decoder::Attention(const Layer& layer, const at::Tensor& x, const at::Tensor& cos,
                              const at::Tensor& sin, const std::vector<Segment>& segments,
                              int64_t layer_index, bool last_only) const {
  // Rows of x are [B, T] for one segment, [1, sum T_i] for several (each B_i = 1).
  const int64_t hkv = config_.num_key_value_heads, d = config_.head_dim;
  const int64_t g = config_.num_attention_heads / hkv;
  const Qkv qkv = ProjectQkv(layer, x, cos, sin);
  std::vector<at::Tensor> outs;  // [B_i*T_i, Hq D] per segment
  const bool whole = segments.size() == 1;
  int64_t offset = 0;
  for (const Segment& seg : segments) {
    at::Tensor qs = whole ? qkv.q : qkv.q.narrow(2, offset, seg.t);  // [B_i, Hq, T_i, D]
    at::Tensor ks = whole ? qkv.k : qkv.k.narrow(2, offset, seg.t);  // [B_i, Hkv, T_i, D]
    at::Tensor vs = whole ? qkv.v : qkv.v.narrow(2, offset, seg.t);
    offset += seg.t;
    if (seg.cache != nullptr) std::tie(ks, vs) = seg.cache->Append(layer_index, ks, vs);
    kernels::AttentionMask mask = LayerMask(seg, layer_index);  // B_i x T_i x S
    if (last_only) {
      qs = qs.narrow(2, seg.t - 1, 1);
      mask = mask.Narrow(seg.t - 1, 1);
    }
    const int64_t sb = qs.size(0), st = qs.size(2);
    // Grouped-query attention without copying K/V per query head: the G query
    // heads that share a KV head are stacked along the token axis.
    at::Tensor qg = qs.reshape({sb, hkv, g * st, d});  // [B_i, Hkv, G T_i, D]
    outs.push_back(
        kernels::Attention(attention_, qg, ks, vs, mask, qkv.q_scale, g));  // [B_i T_i, Hq D]
  }
  return layer.o_proj(outs.size() == 1 ? outs[0] : at::cat(outs, 0));  // [B*T, H]
}

bool Decoder::RunsInChunks(const std::vector<Segment>& segments,
                           const std::vector<at::Tensor>* layer_outputs) const {
  return segments.size() == 1 && segments[0].mask.batch() == 1 &&
         segments[0].t > kChunkedLayersFrom && layer_outputs == nullptr;
}

at::Tensor Decoder::LayersInChunks(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                                   const Segment& seg, int64_t n_layers, bool final_norm,
                                   bool last_only) const {
  const int64_t t = seg.t, hkv = config_.num_key_value_heads, d = config_.head_dim;
  const int64_t g = config_.num_attention_heads / hkv;
  const int64_t chunks = (t + kLayerChunkRows - 1) / kLayerChunkRows;
  // Rows [r0, r0 + n) of chunk c, and their RoPE tables.
  struct Rows {
    int64_t r0, n;
    at::Tensor x, cos, sin;  // [n, H] (a view: updated in place), [1, n, D/2]
  };
  auto rows = [&](int64_t c) {
    const int64_t r0 = t * c / chunks, n = t * (c + 1) / chunks - r0;
    return Rows{r0, n, x.narrow(0, r0, n), cos.narrow(1, r0, n), sin.narrow(1, r0, n)};
  };
  for (int64_t i = 0; i < n_layers; ++i) {
    const Layer& layer = layers_[i];
    // Every token's keys and values first, from the rows as the layer found them.
    at::Tensor keys = at::empty({1, hkv, t, d}, x.options());  // [1, Hkv, T, D]
    at::Tensor values = at::empty({1, hkv, t, d}, x.options());
    for (int64_t c = 0; c < chunks; ++c) {
      Rows r = rows(c);
      const Qkv qkv = ProjectQkv(layer, AddRmsNorm(r.x, {}, layer.input_layernorm), r.cos, r.sin);
      keys.narrow(2, r.r0, r.n).copy_(qkv.k);
      values.narrow(2, r.r0, r.n).copy_(qkv.v);
    }
    at::Tensor ks = keys, vs = values;
    if (seg.cache != nullptr) std::tie(ks, vs) = seg.cache->Append(i, keys, values);
    const kernels::AttentionMask& mask = LayerMask(seg, i);
    // Then each chunk's queries (projected again: holding every token's
    // would cost as much as the residual stream) and its MLP, added to its
    // rows in place: no other chunk reads them in this layer any more.
    for (int64_t c = 0; c < chunks; ++c) {
      Rows r = rows(c);
      const Qkv qkv = ProjectQkv(layer, AddRmsNorm(r.x, {}, layer.input_layernorm), r.cos, r.sin);
      const at::Tensor qg = qkv.q.reshape({1, hkv, g * r.n, d});  // [1, Hkv, G n, D]
      r.x.add_(layer.o_proj(
          kernels::Attention(attention_, qg, ks, vs, mask.Narrow(r.r0, r.n), qkv.q_scale, g)));
      r.x.add_(MlpRows(layer, AddRmsNorm(r.x, {}, layer.post_attention_layernorm)));
    }
  }
  if (final_norm) {
    for (int64_t c = 0; c < chunks; ++c) {
      Rows r = rows(c);
      r.x.copy_(AddRmsNorm(r.x, {}, norm_));
    }
  }
  return last_only ? x.narrow(0, t - 1, 1) : x;  // [T, H] or [1, H]
}

at::Tensor Decoder::Mlp(const Layer& layer, const at::Tensor& x) const {
  const int64_t n = x.size(0);
  if (n <= kMlpRows) return MlpRows(layer, x);
  // Long inputs in row chunks: the [N, 2 I] intermediate is the largest
  // activation of a layer (about ten times the hidden state).
  at::Tensor out = at::empty({n, config_.hidden_size}, x.options());  // [N, H]
  const int64_t chunks = (n + kMlpRows - 1) / kMlpRows;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = n * c / chunks, r1 = n * (c + 1) / chunks;
    out.narrow(0, r0, r1 - r0).copy_(MlpRows(layer, x.narrow(0, r0, r1 - r0)));
  }
  return out;
}

at::Tensor Decoder::MlpRows(const Layer& layer, const at::Tensor& x) const {
  const int64_t inter = config_.intermediate_size;
  at::Tensor gu = layer.gate_up_proj(x);  // [N, 2 I]
  at::Tensor h = fused_cpu_ ? cpu_kernels::SiluMul(gu)
                            : at::silu(gu.narrow(1, 0, inter)).mul_(gu.narrow(1, inter, inter));
  return layer.down_proj(h);  // [N, H]
}

at::Tensor Decoder::Forward(const ForwardInput& in, KvCache* cache,
                            std::vector<at::Tensor>* layer_outputs) const {
  const int64_t b = in.ids.size(0), t = in.ids.size(1), h = config_.hidden_size;
  const int64_t n_layers = in.num_layers < 0
                               ? config_.num_hidden_layers
                               : std::min<int64_t>(in.num_layers, config_.num_hidden_layers);
  if (cache != nullptr && n_layers != config_.num_hidden_layers) {
    throw Error(ErrorKind::kInternal, "early exit cannot fill a KV cache");
  }
  if (in.positions.sizes() != in.ids.sizes()) {
    throw Error(ErrorKind::kInternal, "positions and ids differ in shape");
  }
  if (in.last_position_only && (layer_outputs != nullptr || n_layers == 0)) {
    throw Error(ErrorKind::kInternal, "last_position_only needs a last layer and no layer outputs");
  }
  const int64_t past = cache != nullptr ? cache->length() : 0;
  at::Tensor ids = in.ids.to(device_);
  at::Tensor valid = in.valid.defined()
                         ? in.valid.to(device_)
                         : at::ones({b, t}, at::TensorOptions().dtype(at::kBool).device(device_));
  at::Tensor key_valid = cache != nullptr ? cache->KeyValidWith(valid) : valid;  // [B, S]
  auto [cos, sin] = RopeTables(in.positions);                                    // [B, T, D/2]

  at::Tensor x = Embed(ids).view({b * t, h});  // [B*T, H]
  at::Tensor out = Layers(x, cos, sin, {MakeSegment(in, past, key_valid, cache)}, n_layers,
                          in.apply_final_norm, in.last_position_only, layer_outputs, {b, t, h});
  if (cache != nullptr) cache->Commit(t);
  return out.view({b, in.last_position_only ? 1 : t, h});
}

at::Tensor Decoder::Layers(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                           const std::vector<Segment>& segments, int64_t n_layers, bool final_norm,
                           bool last_only, std::vector<at::Tensor>* layer_outputs,
                           at::IntArrayRef output_shape) const {
  if (RunsInChunks(segments, layer_outputs)) {
    return LayersInChunks(x, cos, sin, segments[0], n_layers, final_norm, last_only);
  }
  // Each block's output waits in `pending` and is added by the next norm, so
  // the fused kernel does add and norm in one pass.
  at::Tensor pending;  // [N, H]
  if (layer_outputs != nullptr) layer_outputs->push_back(x.clone().view(output_shape));
  for (int64_t i = 0; i < n_layers; ++i) {
    const Layer& layer = layers_[i];
    // Past the last layer's attention, positions that no one reads are dead
    // weight: only the kept rows go on (a 32-token question saves 1/24 of its
    // MLP work; a prompt chunk nearly as much).
    const bool trim = last_only && i == n_layers - 1;
    pending = Attention(layer, AddRmsNorm(x, pending, layer.input_layernorm), cos, sin, segments, i,
                        trim);
    if (trim) x = LastRows(x, segments);
    pending = Mlp(layer, AddRmsNorm(x, pending, layer.post_attention_layernorm));
    if (layer_outputs != nullptr) layer_outputs->push_back((x + pending).view(output_shape));
  }
  if (final_norm) return AddRmsNorm(x, pending, norm_);
  return pending.defined() ? x + pending : x;
}

at::Tensor Decoder::ForwardMany(const std::vector<ForwardInput>& inputs,
                                const std::vector<KvCache*>& caches,
                                bool last_positions_only) const {
  if (inputs.empty() || inputs.size() != caches.size()) {
    throw Error(ErrorKind::kInternal, "ForwardMany: one cache per input");
  }
  const int64_t h = config_.hidden_size;
  std::vector<Segment> segments;
  std::vector<at::Tensor> ids, positions;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const ForwardInput& in = inputs[i];
    KvCache* cache = caches[i];
    if (in.ids.dim() != 2 || in.ids.size(0) != 1 || in.positions.sizes() != in.ids.sizes() ||
        in.valid.defined() || in.attention.mode != AttentionMode::kCausal || in.num_layers >= 0 ||
        !in.apply_final_norm || cache == nullptr || cache->batch() != 1) {
      throw Error(ErrorKind::kInternal, "ForwardMany: one causal, unpadded sequence per cache");
    }
    const int64_t t = in.ids.size(1);
    // Every token real: the flags are recorded here and committed after the layers.
    at::Tensor key_valid = cache->KeyValidWith(
        at::ones({1, t}, at::TensorOptions().dtype(at::kBool).device(device_)));  // [1, S]
    segments.push_back(MakeSegment(in, cache->length(), key_valid, cache));
    ids.push_back(in.ids.to(device_));
    positions.push_back(in.positions.to(device_));
  }
  at::Tensor all_ids = at::cat(ids, 1);                 // [1, N]
  auto [cos, sin] = RopeTables(at::cat(positions, 1));  // [1, N, D/2]
  const int64_t n = all_ids.size(1);
  at::Tensor x = Embed(all_ids).view({n, h});  // [N, H]
  at::Tensor out = Layers(x, cos, sin, segments, config_.num_hidden_layers, /*final_norm=*/true,
                          last_positions_only, nullptr, {n, h});
  for (size_t i = 0; i < caches.size(); ++i) caches[i]->Commit(inputs[i].ids.size(1));
  return out;  // [N, H]
}

at::Tensor Decoder::LastRows(const at::Tensor& x, const std::vector<Segment>& segments) {
  std::vector<int64_t> rows;  // the last position of each batch row of each segment
  int64_t offset = 0;
  for (const Segment& seg : segments) {
    const int64_t b = seg.mask.batch();
    for (int64_t i = 0; i < b; ++i) rows.push_back(offset + i * seg.t + seg.t - 1);
    offset += b * seg.t;
  }
  return x.index_select(0, at::tensor(rows, at::kLong).to(x.device()));  // [R, H]
}

at::Tensor Decoder::Embed(const at::Tensor& ids) const {
  at::Tensor e = at::embedding(embed_tokens_, ids);  // [..., H]
  return e.scalar_type() == dtype_ ? e : e.to(dtype_);
}

at::Tensor Decoder::Logits(const at::Tensor& hidden) const {
  if (lm_head_bf16_.defined()) {
    return cpu_kernels::MatmulBf16Weights(hidden.to(dtype_).contiguous(), lm_head_bf16_);
  }
  return lm_head_(hidden.to(dtype_)).to(at::kFloat);  // [N, V]
}

}  // namespace gritserve
