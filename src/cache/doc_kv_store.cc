#include "gritserve/cache/doc_kv_store.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <chrono>
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
constexpr char kTempMark[] = ".tmp-";  // in the names of files being written

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
// share one directory. A failed write leaves no temporary file behind (a full
// disk must not fill up further).
void AtomicWrite(const std::string& path, const std::string& bytes) {
  static const std::string tag = std::to_string(std::random_device{}());
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + kTempMark + tag + "-" + std::to_string(counter.fetch_add(1));
  std::error_code ec;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      fs::remove(tmp, ec);
      throw std::runtime_error(tmp + ": " + std::strerror(errno));
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error("renaming " + tmp + ": " + ec.message());
  }
}

// Marks a file as just used: the start-up scan orders the disk tier by it.
// The kernel's own clock (as for a write), so uses and writes compare.
void TouchFile(const std::string& path) { utimensat(AT_FDCWD, path.c_str(), nullptr, 0); }

// What one id costs in memory besides its name and token ids (map and list
// nodes, the record itself): bounds the number of ids, not just their bytes.
constexpr int64_t kAliasOverhead = 128;

int64_t AliasBytes(const std::string& alias, const DocAlias& info) {
  return kAliasOverhead + static_cast<int64_t>(alias.size() + info.ids.size() * sizeof(int32_t));
}

std::string AliasJson(const std::string& alias, const DocAlias& info) {
  const json j = {
      {"alias", alias},  {"key", info.key.Hex()},         {"source", KvSourceName(info.source)},
      {"ids", info.ids}, {"text_begin", info.text_begin}, {"text_end", info.text_end}};
  return j.dump();
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
  if (options_.dir.empty()) return;
  stats_.disk_budget = options_.disk_budget_bytes;
  std::error_code ec;
  fs::create_directories(fs::path(options_.dir) / "aliases", ec);
  if (ec) {
    // Said once here; the writes that fail from now on are only counted.
    write_failing_ = true;
    spdlog::warn(
        "document cache: cannot create {}: {}; serving from memory (failed writes are counted "
        "in /metrics)",
        options_.dir, ec.message());
  }
  ScanDirectory();
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
      if (disk_entries_.count(key) != 0) {
        TouchDiskLocked(key);
        TouchFile(EntryPath(key));
      }
      return *it->second;
    }
  }
  if (!options_.dir.empty() && fs::exists(EntryPath(key))) {
    int64_t file_bytes = 0;
    std::shared_ptr<DocKvEntry> e = ReadEntryFile(key, &file_bytes);
    if (e) {
      TouchFile(EntryPath(key));
      std::shared_ptr<const DocKvEntry> entry = e;
      std::lock_guard<std::mutex> lock(mu_);
      stats_.disk_reads += 1;
      stats_.hits += 1;
      // Indexes a file another server wrote into a shared directory, too.
      RecordDiskFileLocked({false, key, "", file_bytes});
      EvictDiskLocked();
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
  // An entry file larger than the whole disk budget is not written.
  const std::optional<std::string> file = options_.dir.empty() ? std::nullopt : EntryFile(*shared);
  if (file) {
    const std::string path = EntryPath(shared->key);
    std::string error;
    try {
      AtomicWrite(path, *file);
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::lock_guard<std::mutex> lock(mu_);
    CountWriteLocked(error.empty(), path, error);
    if (error.empty()) {
      stats_.disk_writes += 1;
      RecordDiskFileLocked({false, shared->key, "", static_cast<int64_t>(file->size())});
      EvictDiskLocked();
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
  std::lock_guard<std::mutex> lock(mu_);
  PutAliasLocked(alias, std::move(info));
  WriteAliasLocked(alias);
}

std::optional<DocAlias> DocKvStore::Lookup(const std::string& alias) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = aliases_.find(alias);
  if (it == aliases_.end()) return std::nullopt;
  AliasSlot& slot = it->second;
  alias_lru_.splice(alias_lru_.begin(), alias_lru_, slot.lru);
  if (slot.file) {
    disk_lru_.splice(disk_lru_.begin(), disk_lru_, *slot.file);
    TouchFile(AliasPath(alias));
  }
  return slot.info;
}

bool DocKvStore::Remove(const std::string& alias_or_key) {
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<DocKey> key;
  bool removed = false;
  auto a = aliases_.find(alias_or_key);
  if (a != aliases_.end()) {
    key = a->second.info.key;
    DropAliasLocked(alias_or_key);
    removed = true;
  } else {
    key = DocKey::FromHex(alias_or_key);
  }
  if (!key) return removed;
  auto it = index_.find(*key);
  if (it != index_.end()) {
    stats_.bytes -= (*it->second)->ByteSize();
    lru_.erase(it->second);
    index_.erase(it);
    removed = true;
  }
  if (!options_.dir.empty()) {
    std::error_code ec;
    if (fs::remove(EntryPath(*key), ec)) removed = true;
    ForgetDiskEntryLocked(*key);
  }
  return removed;
}

void DocKvStore::CountComputed() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.computed += 1;
}

DocKvStats DocKvStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  DocKvStats s = stats_;
  s.entries = static_cast<int64_t>(lru_.size());
  s.aliases = static_cast<int64_t>(aliases_.size());
  s.disk_files = static_cast<int64_t>(disk_lru_.size());
  s.alias_bytes = alias_bytes_;
  return s;
}

std::string DocKvStore::EntryPath(const DocKey& key) const {
  return (fs::path(options_.dir) / (key.Hex() + ".kv")).string();
}

std::string DocKvStore::AliasPath(const std::string& alias) const {
  XXH128_hash_t h = XXH3_128bits(alias.data(), alias.size());
  return (fs::path(options_.dir) / "aliases" / (HexOf(h.high64, h.low64) + ".json")).string();
}

// File: magic (8) | header length (8) | header JSON | payload | XXH64 of header+payload (8).
std::optional<std::string> DocKvStore::EntryFile(const DocKvEntry& e) const {
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
  if (static_cast<int64_t>(file.size()) > options_.disk_budget_bytes) return std::nullopt;
  return file;
}

std::shared_ptr<DocKvEntry> DocKvStore::ReadEntryFile(const DocKey& key, int64_t* file_bytes) {
  const std::string path = EntryPath(key);
  try {
    const std::string file = ReadAll(path);
    *file_bytes = static_cast<int64_t>(file.size());
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
    ForgetDiskEntryLocked(key);
    stats_.disk_errors += 1;
    return nullptr;
  }
}

void DocKvStore::RecordDiskFileLocked(DiskFile file) {
  std::optional<DiskLru::iterator>* alias_file = nullptr;
  if (file.is_alias) {
    auto a = aliases_.find(file.alias);
    if (a == aliases_.end()) return;  // forgotten meanwhile
    alias_file = &a->second.file;
    if (*alias_file) {
      stats_.disk_bytes -= (**alias_file)->bytes;
      disk_lru_.erase(**alias_file);
    }
  } else {
    ForgetDiskEntryLocked(file.key);
  }
  stats_.disk_bytes += file.bytes;
  disk_lru_.push_front(std::move(file));
  if (alias_file != nullptr) {
    *alias_file = disk_lru_.begin();
  } else {
    disk_entries_[disk_lru_.front().key] = disk_lru_.begin();
  }
}

void DocKvStore::TouchDiskLocked(const DocKey& key) {
  auto d = disk_entries_.find(key);
  if (d != disk_entries_.end()) disk_lru_.splice(disk_lru_.begin(), disk_lru_, d->second);
}

void DocKvStore::ForgetDiskEntryLocked(const DocKey& key) {
  auto d = disk_entries_.find(key);
  if (d == disk_entries_.end()) return;
  stats_.disk_bytes -= d->second->bytes;
  disk_lru_.erase(d->second);
  disk_entries_.erase(d);
}

// Least recently used files first, entries and ids alike. An entry leaving
// the disk tier takes its ids with it: an id names what the disk keeps, and
// without this every id ever given would stay on disk.
void DocKvStore::EvictDiskLocked() {
  while (stats_.disk_bytes > options_.disk_budget_bytes && !disk_lru_.empty()) {
    const DiskFile victim = disk_lru_.back();
    if (victim.is_alias) {
      DropAliasLocked(victim.alias);
      stats_.alias_evictions += 1;
    } else {
      std::error_code ec;
      fs::remove(EntryPath(victim.key), ec);
      ForgetDiskEntryLocked(victim.key);
      stats_.disk_evictions += 1;
      DropAliasesOfLocked(victim.key);
    }
  }
}

void DocKvStore::CountWriteLocked(bool ok, const std::string& path, const std::string& error) {
  if (ok) {
    if (write_failing_) spdlog::info("document cache: writing to {} again", options_.dir);
    write_failing_ = false;
    return;
  }
  stats_.disk_write_errors += 1;
  if (!write_failing_) {
    spdlog::warn(
        "document cache: cannot write {}: {}; serving from memory, further write errors are "
        "counted in /metrics (gritserve_doc_cache_disk_write_errors_total) until a write succeeds",
        path, error);
  }
  write_failing_ = true;
}

void DocKvStore::PutAliasLocked(const std::string& alias, DocAlias info) {
  auto it = aliases_.find(alias);
  if (it == aliases_.end()) {
    alias_lru_.push_front(alias);
    it = aliases_.emplace(alias, AliasSlot{}).first;
    it->second.lru = alias_lru_.begin();
  } else {
    AliasSlot& old = it->second;
    alias_bytes_ -= old.bytes;
    auto range = aliases_of_.equal_range(old.info.key);
    for (auto k = range.first; k != range.second; ++k) {
      if (k->second == alias) {
        aliases_of_.erase(k);
        break;
      }
    }
    alias_lru_.splice(alias_lru_.begin(), alias_lru_, old.lru);
  }
  AliasSlot& slot = it->second;
  slot.bytes = AliasBytes(alias, info);
  alias_bytes_ += slot.bytes;
  aliases_of_.emplace(info.key, alias);
  slot.info = std::move(info);
  while (alias_bytes_ > options_.alias_budget_bytes && !alias_lru_.empty()) {
    DropAliasLocked(alias_lru_.back());
    stats_.alias_evictions += 1;
  }
}

void DocKvStore::DropAliasLocked(const std::string& alias) {
  auto it = aliases_.find(alias);
  if (it == aliases_.end()) return;
  AliasSlot& slot = it->second;
  if (!options_.dir.empty()) {
    std::error_code ec;
    fs::remove(AliasPath(alias), ec);
  }
  if (slot.file) {
    stats_.disk_bytes -= (*slot.file)->bytes;
    disk_lru_.erase(*slot.file);
  }
  auto range = aliases_of_.equal_range(slot.info.key);
  for (auto k = range.first; k != range.second; ++k) {
    if (k->second == alias) {
      aliases_of_.erase(k);
      break;
    }
  }
  alias_bytes_ -= slot.bytes;
  alias_lru_.erase(slot.lru);
  aliases_.erase(it);
}

void DocKvStore::DropAliasesOfLocked(const DocKey& key) {
  std::vector<std::string> names;
  auto range = aliases_of_.equal_range(key);
  for (auto k = range.first; k != range.second; ++k) names.push_back(k->second);
  for (const std::string& name : names) DropAliasLocked(name);
  stats_.alias_evictions += static_cast<int64_t>(names.size());
}

void DocKvStore::WriteAliasLocked(const std::string& alias) {
  auto it = aliases_.find(alias);
  if (options_.dir.empty() || it == aliases_.end()) return;
  const std::string bytes = AliasJson(alias, it->second.info);
  if (static_cast<int64_t>(bytes.size()) > options_.disk_budget_bytes) return;
  const std::string path = AliasPath(alias);
  try {
    AtomicWrite(path, bytes);
  } catch (const std::exception& e) {
    CountWriteLocked(false, path, e.what());
    // An older file of this id must not come back at the next start.
    std::error_code ec;
    fs::remove(path, ec);
    return;
  }
  CountWriteLocked(true, path, "");
  RecordDiskFileLocked({true, {}, alias, static_cast<int64_t>(bytes.size())});
  EvictDiskLocked();
}

// Indexes what an earlier run left: entry files, and ids (loaded), oldest
// use first, then trims both tiers' files to the budgets. Temporary files of
// writers that died are removed once they are clearly abandoned.
void DocKvStore::ScanDirectory() {
  struct Found {
    fs::file_time_type time;
    DiskFile file;
    std::optional<DocAlias> alias;
  };
  std::vector<Found> found;
  const auto abandoned = fs::file_time_type::clock::now() - std::chrono::hours(1);
  auto scan = [&](const fs::path& dir, bool aliases) {
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(dir, ec)) {
      std::error_code fe;
      const auto time = f.last_write_time(fe);
      const auto size = f.file_size(fe);
      if (fe || !f.is_regular_file(fe)) continue;
      const std::string name = f.path().filename().string();
      if (name.find(kTempMark) != std::string::npos) {
        if (time < abandoned) fs::remove(f.path(), fe);
        continue;
      }
      Found entry{time, {aliases, {}, "", static_cast<int64_t>(size)}, std::nullopt};
      if (aliases && f.path().extension() == ".json") {
        entry.alias = ReadAliasFile(f.path().string(), &entry.file.alias);
        if (!entry.alias) continue;
      } else if (!aliases && f.path().extension() == ".kv") {
        auto key = DocKey::FromHex(f.path().stem().string());
        if (!key) continue;
        entry.file.key = *key;
      } else {
        continue;
      }
      found.push_back(std::move(entry));
    }
  };
  scan(options_.dir, false);
  scan(fs::path(options_.dir) / "aliases", true);
  std::stable_sort(found.begin(), found.end(),
                   [](const Found& a, const Found& b) { return a.time < b.time; });
  std::lock_guard<std::mutex> lock(mu_);
  for (Found& f : found) {
    if (f.alias) PutAliasLocked(f.file.alias, std::move(*f.alias));
    RecordDiskFileLocked(std::move(f.file));
  }
  EvictDiskLocked();
  if (!found.empty()) {
    spdlog::info("document cache: {} entries and {} ids ({} bytes on disk) restored from {}",
                 disk_entries_.size(), aliases_.size(), stats_.disk_bytes, options_.dir);
  }
}

std::optional<DocAlias> DocKvStore::ReadAliasFile(const std::string& path, std::string* alias) {
  try {
    const json j = json::parse(ReadAll(path));
    const JsonFields f = JsonFields::File(j, path);
    DocAlias a;
    auto key = DocKey::FromHex(f.RequireString("key"));
    if (!key) throw std::runtime_error("bad key");
    a.key = *key;
    a.source = f.RequireString("source") == "embed" ? KvSource::kEmbed : KvSource::kCausal;
    a.ids = TokenIds(f);
    a.text_begin = static_cast<size_t>(f.RequireInt("text_begin", 0));
    a.text_end = static_cast<size_t>(f.RequireInt("text_end", 0));
    CheckTextSpan(a.text_begin, a.text_end, a.ids.size());
    *alias = f.RequireString("alias");
    return a;
  } catch (const std::exception& e) {
    spdlog::warn("document cache: ignoring alias file {}: {}", path, e.what());
    return std::nullopt;
  }
}

}  // namespace gritserve
