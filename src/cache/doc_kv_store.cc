#include "gritserve/cache/doc_kv_store.h"

#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The token ids of a cache file or alias header.
std::vector<int32_t> TokenIds(const JsonFields& h) {
  const json* ids = h.Find("ids");
  if (ids == nullptr) throw h.Missing("ids");
  if (!ids->is_array()) throw h.TypeError("ids", "a list of token ids");
  return ids->get<std::vector<int32_t>>();
}

constexpr char kMagic[8] = {'G', 'S', 'K', 'V', 'v', '1', 0, 0};

std::string HexOf(uint64_t hi, uint64_t lo) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
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

// Writes to a temporary name in the same directory, then renames: a reader
// never sees a half-written file, even after a crash. The temporary name is
// unique to this writer, since servers in several containers (each PID 1) may
// share one directory.
void AtomicWrite(const std::string& path, const std::string& bytes) {
  static const std::string tag = std::to_string(std::random_device{}());
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp-" + tag + "-" + std::to_string(counter.fetch_add(1));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  fs::rename(tmp, path);
}

// The product of sizes read from a file, which may be damaged: a negative size
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

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

const char* KvSourceName(KvSource source) {
  return source == KvSource::kEmbed ? "embed" : "causal";
}

std::string DocKey::Hex() const { return HexOf(hi, lo); }

std::optional<DocKey> DocKey::FromHex(const std::string& hex) {
  if (hex.size() != 32 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return std::nullopt;
  }
  DocKey k;
  k.hi = std::stoull(hex.substr(0, 16), nullptr, 16);
  k.lo = std::stoull(hex.substr(16), nullptr, 16);
  return k;
}

int64_t DocKvEntry::ByteSize() const {
  int64_t n = 0;
  for (const auto& t : keys) n += t.numel() * static_cast<int64_t>(t.element_size());
  for (const auto& t : values) n += t.numel() * static_cast<int64_t>(t.element_size());
  n += static_cast<int64_t>((mean.size() + last.size()) * sizeof(float) +
                            ids.size() * sizeof(int32_t));
  return n;
}

DocKvStore::DocKvStore(Options options) : options_(std::move(options)) {
  stats_.budget = options_.budget_bytes;
  if (!options_.dir.empty()) {
    fs::create_directories(fs::path(options_.dir) / "aliases");
    LoadAliases();
  }
}

DocKey DocKvStore::MakeKey(const std::string& template_name, KvSource source,
                           const std::vector<int32_t>& ids) const {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  auto add = [&](const std::string& s) {
    const uint64_t n = s.size();
    XXH3_128bits_update(st, &n, sizeof(n));  // length-prefixed: no ambiguous concatenation
    XXH3_128bits_update(st, s.data(), s.size());
  };
  add(options_.fingerprint);
  add(template_name);
  add(KvSourceName(source));
  add(std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t)));
  XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  return {h.high64, h.low64};
}

void DocKvStore::Touch(Lru::iterator it) { lru_.splice(lru_.begin(), lru_, it); }

void DocKvStore::EvictLocked() {
  while (stats_.bytes > options_.budget_bytes && !lru_.empty()) {
    const auto& victim = lru_.back();
    stats_.bytes -= victim->ByteSize();
    index_.erase(victim->key);
    lru_.pop_back();
    stats_.evictions += 1;
  }
  stats_.entries = static_cast<int64_t>(lru_.size());
}

std::shared_ptr<const DocKvEntry> DocKvStore::Get(const DocKey& key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      Touch(it->second);
      stats_.hits += 1;
      return *it->second;
    }
  }
  if (!options_.dir.empty() && fs::exists(EntryPath(key))) {
    std::shared_ptr<DocKvEntry> e = ReadEntryFile(key);
    if (e) {
      std::shared_ptr<const DocKvEntry> entry = e;
      std::lock_guard<std::mutex> lock(mu_);
      stats_.disk_reads += 1;
      stats_.hits += 1;
      if (index_.find(key) == index_.end() && entry->ByteSize() <= options_.budget_bytes) {
        lru_.push_front(entry);
        index_[key] = lru_.begin();
        stats_.bytes += entry->ByteSize();
        EvictLocked();
      }
      return entry;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.misses += 1;
  return nullptr;
}

namespace {

// [Hkv, T, D] in host memory, in the storage dtype. Entries computed on a GPU
// go to page-locked memory: every request that reuses them copies them back to
// the GPU, and pageable memory takes a bounce buffer for that.
at::Tensor ToHost(const at::Tensor& t, at::ScalarType dtype) {
  if (!t.is_cuda()) return t.to(at::kCPU).to(dtype).contiguous();
  at::Tensor host =
      at::empty(t.sizes(), at::TensorOptions().dtype(dtype).pinned_memory(true));  // [Hkv, T, D]
  host.copy_(t);
  return host;
}

}  // namespace

std::shared_ptr<const DocKvEntry> DocKvStore::Put(DocKvEntry entry) {
  for (auto& t : entry.keys) t = ToHost(t, options_.storage_dtype);
  for (auto& t : entry.values) t = ToHost(t, options_.storage_dtype);
  auto shared = std::make_shared<const DocKvEntry>(std::move(entry));
  if (!options_.dir.empty()) {
    try {
      WriteEntryFile(*shared);
      std::lock_guard<std::mutex> lock(mu_);
      stats_.disk_writes += 1;
    } catch (const std::exception& e) {
      spdlog::warn("document cache: cannot write {}: {}", EntryPath(shared->key), e.what());
      std::lock_guard<std::mutex> lock(mu_);
      stats_.disk_errors += 1;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(shared->key);
  if (it != index_.end()) {
    stats_.bytes -= (*it->second)->ByteSize();
    lru_.erase(it->second);
    index_.erase(it);
  }
  // An entry larger than the whole budget is used once and not kept.
  if (shared->ByteSize() <= options_.budget_bytes) {
    lru_.push_front(shared);
    index_[shared->key] = lru_.begin();
    stats_.bytes += shared->ByteSize();
  }
  EvictLocked();
  return shared;
}

void DocKvStore::SetAlias(const std::string& alias, DocAlias info) {
  if (!options_.dir.empty()) {
    json j = {
        {"alias", alias},  {"key", info.key.Hex()},         {"source", KvSourceName(info.source)},
        {"ids", info.ids}, {"text_begin", info.text_begin}, {"text_end", info.text_end}};
    try {
      AtomicWrite(AliasPath(alias), j.dump());
    } catch (const std::exception& e) {
      spdlog::warn("document cache: cannot write alias '{}': {}", alias, e.what());
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  aliases_[alias] = std::move(info);
  stats_.aliases = static_cast<int64_t>(aliases_.size());
}

std::optional<DocAlias> DocKvStore::Lookup(const std::string& alias) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = aliases_.find(alias);
  if (it == aliases_.end()) return std::nullopt;
  return it->second;
}

bool DocKvStore::Remove(const std::string& alias_or_key) {
  std::optional<DocKey> key;
  bool removed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto a = aliases_.find(alias_or_key);
    if (a != aliases_.end()) {
      key = a->second.key;
      aliases_.erase(a);
      removed = true;
    } else {
      key = DocKey::FromHex(alias_or_key);
    }
    if (key) {
      auto it = index_.find(*key);
      if (it != index_.end()) {
        stats_.bytes -= (*it->second)->ByteSize();
        lru_.erase(it->second);
        index_.erase(it);
        removed = true;
      }
    }
    stats_.entries = static_cast<int64_t>(lru_.size());
    stats_.aliases = static_cast<int64_t>(aliases_.size());
  }
  if (!options_.dir.empty()) {
    std::error_code ec;
    if (removed && !DocKey::FromHex(alias_or_key)) fs::remove(AliasPath(alias_or_key), ec);
    if (key && fs::remove(EntryPath(*key), ec)) removed = true;
  }
  return removed;
}

void DocKvStore::CountComputed() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.computed += 1;
}

DocKvStats DocKvStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::string DocKvStore::EntryPath(const DocKey& key) const {
  return (fs::path(options_.dir) / (key.Hex() + ".kv")).string();
}

std::string DocKvStore::AliasPath(const std::string& alias) const {
  XXH128_hash_t h = XXH3_128bits(alias.data(), alias.size());
  return (fs::path(options_.dir) / "aliases" / (HexOf(h.high64, h.low64) + ".json")).string();
}

// File: magic (8) | header length (8) | header JSON | payload | XXH64 of header+payload (8).
void DocKvStore::WriteEntryFile(const DocKvEntry& e) {
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
                 {"fingerprint", options_.fingerprint},
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
  std::string file(kMagic, sizeof(kMagic));
  const uint64_t hlen = h.size();
  file.append(reinterpret_cast<const char*>(&hlen), sizeof(hlen));
  file += h;
  file += payload;
  const uint64_t sum = XXH3_64bits(file.data() + 16, file.size() - 16);
  file.append(reinterpret_cast<const char*>(&sum), sizeof(sum));
  AtomicWrite(EntryPath(e.key), file);
}

std::shared_ptr<DocKvEntry> DocKvStore::ReadEntryFile(const DocKey& key) {
  const std::string path = EntryPath(key);
  try {
    const std::string file = ReadAll(path);
    if (file.size() < 24 || std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0) {
      throw std::runtime_error("not a gritserve KV file");
    }
    uint64_t hlen = 0, sum = 0;
    std::memcpy(&hlen, file.data() + 8, 8);
    if (hlen > file.size() - 24) throw std::runtime_error("truncated header");
    std::memcpy(&sum, file.data() + file.size() - 8, 8);
    if (XXH3_64bits(file.data() + 16, file.size() - 24) != sum) {
      throw std::runtime_error("checksum mismatch");
    }
    const json header = json::parse(file.substr(16, hlen));
    const JsonFields h = JsonFields::File(header, path);
    if (h.RequireString("key") != key.Hex()) throw std::runtime_error("key mismatch");
    if (h.RequireString("fingerprint") != options_.fingerprint) {
      throw std::runtime_error("written for another model");
    }
    auto e = std::make_shared<DocKvEntry>();
    e->key = key;
    e->source = h.RequireString("source") == "embed" ? KvSource::kEmbed : KvSource::kCausal;
    e->ids = TokenIds(h);
    e->text_begin = static_cast<size_t>(h.RequireInt("text_begin", 0));
    e->text_end = static_cast<size_t>(h.RequireInt("text_end", 0));
    CheckTextSpan(e->text_begin, e->text_end, e->ids.size());
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
    // Each checked against the file's own size first, so the sum cannot wrap.
    if (tensors > file.size() || vectors > file.size() || payload != tensors + vectors ||
        16 + hlen + payload + 8 != file.size() || static_cast<int64_t>(e->ids.size()) != t) {
      throw std::runtime_error("sizes do not add up");
    }
    const char* p = file.data() + 16 + hlen;
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
    return e;
  } catch (const std::exception& ex) {
    // Never use a damaged or foreign file: drop it so the entry is recomputed.
    spdlog::warn("document cache: dropping {}: {}", path, ex.what());
    std::error_code ec;
    fs::remove(path, ec);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.disk_errors += 1;
    return nullptr;
  }
}

void DocKvStore::LoadAliases() {
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(fs::path(options_.dir) / "aliases", ec)) {
    if (f.path().extension() != ".json") continue;
    try {
      const json alias = json::parse(ReadAll(f.path().string()));
      const JsonFields j = JsonFields::File(alias, f.path());
      DocAlias a;
      auto key = DocKey::FromHex(j.RequireString("key"));
      if (!key) throw std::runtime_error("bad key");
      a.key = *key;
      a.source = j.RequireString("source") == "embed" ? KvSource::kEmbed : KvSource::kCausal;
      a.ids = TokenIds(j);
      a.text_begin = static_cast<size_t>(j.RequireInt("text_begin", 0));
      a.text_end = static_cast<size_t>(j.RequireInt("text_end", 0));
      CheckTextSpan(a.text_begin, a.text_end, a.ids.size());
      aliases_[j.RequireString("alias")] = std::move(a);
    } catch (const std::exception& e) {
      spdlog::warn("document cache: ignoring alias file {}: {}", f.path().string(), e.what());
    }
  }
  stats_.aliases = static_cast<int64_t>(aliases_.size());
  if (!aliases_.empty()) {
    spdlog::info("document cache: {} ids restored from {}", aliases_.size(), options_.dir);
  }
}

}  // namespace gritserve
