#include "gritserve/cache/kv_cache.h"

#include <algorithm>

#include "gritserve/common/error.h"

namespace gritserve {

KvCache::KvCache(int64_t num_layers, int64_t batch, int64_t num_kv_heads, int64_t head_dim,
                 at::ScalarType dtype, at::Device device, float masked)
    : batch_(batch),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      dtype_(dtype),
      device_(device),
      keys_(num_layers),
      values_(num_layers),
      masked_(masked) {}

void KvCache::Reserve(int64_t capacity) {
  if (capacity > capacity_) Resize(capacity);
}

void KvCache::Grow(int64_t needed) {
  // Geometrically, so that token-by-token decoding copies O(n) in total.
  if (needed > capacity_) Resize(std::max<int64_t>({needed, capacity_ * 2, 64}));
}

void KvCache::Resize(int64_t new_cap) {
  auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  for (size_t l = 0; l < keys_.size(); ++l) {
    at::Tensor k = at::empty({batch_, num_kv_heads_, new_cap, head_dim_}, opts);  // [B,Hkv,C,D]
    at::Tensor v = at::empty({batch_, num_kv_heads_, new_cap, head_dim_}, opts);
    if (length_ > 0) {
      k.narrow(2, 0, length_).copy_(keys_[l].narrow(2, 0, length_));
      v.narrow(2, 0, length_).copy_(values_[l].narrow(2, 0, length_));
    }
    keys_[l] = k;
    values_[l] = v;
  }
  at::Tensor valid = at::zeros({batch_, new_cap}, opts.dtype(at::kBool));  // [B, C]
  at::Tensor additive = at::full({batch_, new_cap}, masked_, opts);        // [B, C]
  const int64_t flagged = length_ + staged_;
  if (flagged > 0) {
    valid.narrow(1, 0, flagged).copy_(valid_.narrow(1, 0, flagged));
    additive.narrow(1, 0, flagged).copy_(additive_.narrow(1, 0, flagged));
  }
  valid_ = valid;
  additive_ = additive;
  capacity_ = new_cap;
}

std::pair<at::Tensor, at::Tensor> KvCache::Append(int64_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  if (layer < 0 || layer >= num_layers()) {
    throw Error(ErrorKind::kInternal, "KvCache::Append: layer out of range");
  }
  const int64_t t = k.size(2);
  Grow(length_ + t);
  keys_[layer].narrow(2, length_, t).copy_(k);
  values_[layer].narrow(2, length_, t).copy_(v);
  return {keys_[layer].narrow(2, 0, length_ + t), values_[layer].narrow(2, 0, length_ + t)};
}

void KvCache::Advance(const at::Tensor& valid) {
  KeyValidWith(valid);
  Commit(valid.size(1));
}

void KvCache::Commit(int64_t t) {
  if (t != staged_) throw Error(ErrorKind::kInternal, "KvCache::Commit: flags not recorded");
  length_ += t;
  staged_ = 0;
}

std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> KvCache::Slots(int64_t t) {
  Grow(length_ + t);
  std::vector<at::Tensor> k, v;
  for (int64_t l = 0; l < num_layers(); ++l) {
    k.push_back(keys_[l].narrow(2, length_, t));
    v.push_back(values_[l].narrow(2, length_, t));
  }
  return {std::move(k), std::move(v)};
}

void KvCache::AppendAll(const std::vector<at::Tensor>& k, const std::vector<at::Tensor>& v,
                        const at::Tensor& valid) {
  if (static_cast<int64_t>(k.size()) != num_layers() || k.size() != v.size()) {
    throw Error(ErrorKind::kInternal, "KvCache::AppendAll: layer count mismatch");
  }
  for (int64_t l = 0; l < num_layers(); ++l) Append(l, k[l], v[l]);
  Advance(valid);
}

at::Tensor KvCache::key_valid() const {
  if (capacity_ == 0) return at::zeros({batch_, 0}, at::TensorOptions().dtype(at::kBool));
  return valid_.narrow(1, 0, length_);
}

at::Tensor KvCache::KeyValidWith(const at::Tensor& valid) {
  const int64_t t = valid.size(1);
  Grow(length_ + t);
  valid_.narrow(1, length_, t).copy_(valid);
  // One token's flag on a real token, the usual decode step, is a fill.
  at::Tensor additive = additive_.narrow(1, length_, t);  // [B, T]
  if (t == 1 && batch_ == 1 && valid.device().is_cpu() && valid.scalar_type() == at::kBool) {
    additive.fill_(*valid.data_ptr<bool>() ? 0.0f : masked_);
  } else {
    additive.fill_(0.0f).masked_fill_(valid.logical_not(), masked_);
  }
  staged_ = t;
  return valid_.narrow(1, 0, length_ + t);
}

at::Tensor KvCache::AdditiveWith(int64_t t) const {
  if (t != staged_) throw Error(ErrorKind::kInternal, "KvCache::AdditiveWith: flags not recorded");
  return additive_.narrow(1, 0, length_ + t);
}

at::Tensor KvCache::keys(int64_t layer) const { return keys_.at(layer).narrow(2, 0, length_); }
at::Tensor KvCache::values(int64_t layer) const { return values_.at(layer).narrow(2, 0, length_); }

}  // namespace gritserve
