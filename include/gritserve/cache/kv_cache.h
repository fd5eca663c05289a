// Per-sequence key/value buffers, owned by the caller of Decoder::Forward and
// passed in: the decoder itself keeps no request state.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace gritserve {

// Keys are stored after RoPE at the positions they were computed for; a block of
// keys can be moved to other positions exactly with RotateKeys (R(p+d) = R(d)R(p)).
class KvCache {
 public:
  KvCache() = default;
  // masked: the additive mask value of a hidden key, in `dtype`.
  KvCache(int64_t num_layers, int64_t batch, int64_t num_kv_heads, int64_t head_dim,
          at::ScalarType dtype, at::Device device, float masked);

  int64_t length() const { return length_; }
  int64_t batch() const { return batch_; }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }
  bool empty() const { return length_ == 0; }

  // Writes layer `layer`'s new keys/values at [length, length + T) and returns
  // views of everything stored for that layer including them.
  //   k, v: [B, Hkv, T, D]  ->  ([B, Hkv, length + T, D], [B, Hkv, length + T, D])
  std::pair<at::Tensor, at::Tensor> Append(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  // Records which of the T new tokens are real (not padding) and moves the length
  // past them; called once per forward, after all layers appended.
  //   valid: [B, T] bool
  void Advance(const at::Tensor& valid);

  // [B, length] bool: which stored keys are real tokens.
  at::Tensor key_valid() const;
  // Records which of the T tokens a forward pass is about to append are real,
  // and returns which of all the keys that pass sees are: a view of the
  // stored flags, nothing concatenated. Commit(T) then moves the length.
  //   valid: [B, T] bool -> [B, length + T] bool
  at::Tensor KeyValidWith(const at::Tensor& valid);
  // The same flags as an additive mask (0 where real, `masked` where not),
  // kept beside them so a one-token step's mask is a view, not a new tensor
  // per step.  -> [B, length + T] in dtype, after KeyValidWith(valid: [B, T])
  at::Tensor AdditiveWith(int64_t t) const;
  // Moves the length past the T tokens KeyValidWith recorded, after all
  // layers appended theirs.
  void Commit(int64_t t);
  // Layer views of the stored part: [B, Hkv, length, D].
  at::Tensor keys(int64_t layer) const;
  at::Tensor values(int64_t layer) const;

  // Makes room for exactly `capacity` tokens in total (when it holds fewer),
  // so that appends up to there never copy: a generation reserves its final
  // length (prompt and every answer token) once. Appends past the room
  // grow it geometrically.
  void Reserve(int64_t capacity);
  // Tokens the buffers hold before they must grow.
  int64_t capacity() const { return capacity_; }

  // Writable views of the next T token slots of every layer, for callers that
  // write keys and values in place; Advance(valid) then commits them.
  //   -> (k[l], v[l]): [B, Hkv, T, D] each
  std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> Slots(int64_t t);

  // Appends already-computed keys/values for every layer (e.g. cached documents).
  //   k[l], v[l]: [B, Hkv, T, D]; valid: [B, T] bool
  void AppendAll(const std::vector<at::Tensor>& k, const std::vector<at::Tensor>& v,
                 const at::Tensor& valid);

 private:
  // Room for `needed` tokens, at least doubling when it must grow.
  void Grow(int64_t needed);
  // Buffers of `capacity` tokens, the stored ones copied over.
  void Resize(int64_t capacity);

  int64_t batch_ = 0, num_kv_heads_ = 0, head_dim_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  int64_t length_ = 0;
  int64_t capacity_ = 0;
  std::vector<at::Tensor> keys_, values_;  // each [B, Hkv, capacity, D]
  at::Tensor valid_;                       // [B, capacity] bool
  at::Tensor additive_;                    // [B, capacity] dtype: valid_ as a mask
  float masked_ = 0;
  int64_t staged_ = 0;  // tokens past length_ whose flags KeyValidWith recorded
};

}  // namespace gritserve
