#include "gritserve/cache/entry_codec.h"

#include <xxhash.h>

#include <cstring>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "gritserve/common/json_fields.h"

namespace gritserve {
namespace {

using nlohmann::json;

constexpr char kMagic[8] = {'G', 'S', 'K', 'V', 'v', '1', 0, 0};

// The token ids of an entry or alias header.
std::vector<int32_t> TokenIds(const JsonFields& h) {
  const json* ids = h.Find("ids");
  if (ids == nullptr) throw h.Missing("ids");
  if (!ids->is_array()) throw h.TypeError("ids", "a list of token ids");
  return ids->get<std::vector<int32_t>>();
}

at::ScalarType DtypeFromName(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  throw std::runtime_error("unknown dtype " + name);
}

std::string DtypeName(at::ScalarType t) {
  if (t == at::kHalf) return "float16";
  if (t == at::kBFloat16) return "bfloat16";
  return "float32";
}

// The product of sizes read from a copy, which may be damaged: a negative size
// or a product that does not fit is refused.
size_t Product(std::initializer_list<int64_t> factors) {
  size_t n = 1;
  for (int64_t f : factors) {
    if (f < 0 || __builtin_mul_overflow(n, static_cast<size_t>(f), &n)) {
      throw std::runtime_error("sizes do not add up");
    }
  }
  return n;
}

// The document text's span must lie inside the ids (it indexes them).
void CheckTextSpan(size_t begin, size_t end, size_t ids) {
  if (begin > end || end > ids) throw std::runtime_error("text span outside the ids");
}

KvSource SourceFromName(const std::string& name) {
  return name == "embed" ? KvSource::kEmbed : KvSource::kCausal;
}

// The header of an intact copy, with *hlen set; checks magic and checksum.
json CheckedHeader(const std::string& bytes, uint64_t* hlen) {
  if (bytes.size() < 24 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    throw std::runtime_error("not a gritserve KV entry");
  }
  uint64_t sum = 0;
  std::memcpy(hlen, bytes.data() + 8, 8);
  if (*hlen > bytes.size() - 24) throw std::runtime_error("truncated header");
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  if (XXH3_64bits(bytes.data() + 16, bytes.size() - 24) != sum) {
    throw std::runtime_error("checksum mismatch");
  }
  return json::parse(bytes.substr(16, *hlen));
}

// The tensors and pooled vectors of an entry whose header `h` was checked,
// from the payload at `p` (already checked to hold exactly what h says).
void ReadPayload(const JsonFields& h, const char* p, size_t bytes_size, uint64_t hlen,
                 DocKvEntry* e) {
  const at::ScalarType dt = DtypeFromName(h.RequireString("dtype"));
  const int64_t layers = h.RequireInt("layers", 0), kvh = h.RequireInt("kv_heads", 0),
                t = h.RequireInt("tokens", 0), d = h.RequireInt("head_dim", 0);
  const size_t n_mean = static_cast<size_t>(h.RequireInt("mean", 0));
  const size_t n_last = static_cast<size_t>(h.RequireInt("last", 0));
  // One [Hkv, T, D] tensor, all of them, and the pooled vectors.
  const size_t tensor_bytes = Product({kvh, t, d, static_cast<int64_t>(at::elementSize(dt))});
  const size_t tensors = Product({2, layers, static_cast<int64_t>(tensor_bytes)});
  const size_t vectors = Product({static_cast<int64_t>(n_mean + n_last), 4});
  const size_t payload = static_cast<size_t>(h.RequireInt("payload_bytes", 0));
  // Each checked against the copy's own size first, so the sum cannot wrap.
  if (tensors > bytes_size || vectors > bytes_size || payload != tensors + vectors ||
      16 + hlen + payload + 8 != bytes_size || static_cast<int64_t>(e->ids.size()) != t) {
    throw std::runtime_error("sizes do not add up");
  }
  auto take = [&p](void* to, size_t n) {  // an empty vector's or tensor's data may be null
    if (n > 0) std::memcpy(to, p, n);
    p += n;
  };
  auto next = [&]() {  // [Hkv, T, D]
    at::Tensor x = at::empty({kvh, t, d}, at::TensorOptions().dtype(dt));
    take(x.data_ptr(), tensor_bytes);
    return x;
  };
  for (int64_t l = 0; l < layers; ++l) {
    e->keys.push_back(next());
    e->values.push_back(next());
  }
  e->mean.resize(n_mean);
  take(e->mean.data(), n_mean * 4);
  e->last.resize(n_last);
  take(e->last.data(), n_last * 4);
}

}  // namespace

std::string EncodeEntry(const DocKvEntry& e, const std::string& fingerprint) {
  std::string payload;
  auto append = [&](const void* p, size_t n) { payload.append(static_cast<const char*>(p), n); };
  for (size_t l = 0; l < e.keys.size(); ++l) {
    append(e.keys[l].data_ptr(), e.keys[l].numel() * e.keys[l].element_size());
    append(e.values[l].data_ptr(), e.values[l].numel() * e.values[l].element_size());
  }
  append(e.mean.data(), e.mean.size() * sizeof(float));
  append(e.last.data(), e.last.size() * sizeof(float));
  const at::Tensor& k0 = e.keys.at(0);
  json header = {{"key", e.key.Hex()},
                 {"fingerprint", fingerprint},
                 {"source", KvSourceName(e.source)},
                 {"dtype", DtypeName(k0.scalar_type())},
                 {"layers", e.keys.size()},
                 {"kv_heads", k0.size(0)},
                 {"tokens", k0.size(1)},
                 {"head_dim", k0.size(2)},
                 {"ids", e.ids},
                 {"text_begin", e.text_begin},
                 {"text_end", e.text_end},
                 {"mean", e.mean.size()},
                 {"last", e.last.size()},
                 {"payload_bytes", payload.size()}};
  const std::string h = header.dump();
  std::string bytes(kMagic, sizeof(kMagic));
  const uint64_t hlen = h.size();
  bytes.append(reinterpret_cast<const char*>(&hlen), sizeof(hlen));
  bytes += h;
  bytes += payload;
  const uint64_t sum = XXH3_64bits(bytes.data() + 16, bytes.size() - 16);
  bytes.append(reinterpret_cast<const char*>(&sum), sizeof(sum));
  return bytes;
}

std::shared_ptr<DocKvEntry> DecodeEntry(const std::string& bytes, const DocKey& key,
                                        const std::string& fingerprint, const std::string& where) {
  uint64_t hlen = 0;
  const json header = CheckedHeader(bytes, &hlen);
  const JsonFields h = JsonFields::File(header, where);
  if (h.RequireString("key") != key.Hex()) throw std::runtime_error("key mismatch");
  if (h.RequireString("fingerprint") != fingerprint) {
    throw std::runtime_error("written for another model");
  }
  auto e = std::make_shared<DocKvEntry>();
  e->key = key;
  e->source = SourceFromName(h.RequireString("source"));
  e->ids = TokenIds(h);
  e->text_begin = static_cast<size_t>(h.RequireInt("text_begin", 0));
  e->text_end = static_cast<size_t>(h.RequireInt("text_end", 0));
  CheckTextSpan(e->text_begin, e->text_end, e->ids.size());
  ReadPayload(h, bytes.data() + 16 + hlen, bytes.size(), hlen, e.get());
  return e;
}

std::string EncodeAlias(const std::string& alias, const DocAlias& info,
                        const std::string& fingerprint) {
  const json j = {{"alias", alias},
                  {"key", info.key.Hex()},
                  {"fingerprint", fingerprint},
                  {"source", KvSourceName(info.source)},
                  {"ids", info.ids},
                  {"text_begin", info.text_begin},
                  {"text_end", info.text_end}};
  return j.dump();
}

DocAlias DecodeAlias(const std::string& bytes, const std::string& where,
                     const std::string& fingerprint, std::string* alias) {
  const json j = json::parse(bytes);
  const JsonFields f = JsonFields::File(j, where);
  if (!fingerprint.empty() && f.RequireString("fingerprint") != fingerprint) {
    throw std::runtime_error("written for another model");
  }
  DocAlias a;
  auto key = DocKey::FromHex(f.RequireString("key"));
  if (!key) throw std::runtime_error("bad key");
  a.key = *key;
  a.source = SourceFromName(f.RequireString("source"));
  a.ids = TokenIds(f);
  a.text_begin = static_cast<size_t>(f.RequireInt("text_begin", 0));
  a.text_end = static_cast<size_t>(f.RequireInt("text_end", 0));
  CheckTextSpan(a.text_begin, a.text_end, a.ids.size());
  *alias = f.RequireString("alias");
  return a;
}

}  // namespace gritserve
