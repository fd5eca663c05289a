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
#include <random>
#include <sstream>

#include "gritserve/cache/entry_codec.h"
#include "gritserve/common/error.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;

constexpr char kTempMark[] = ".tmp-";  // in the names of files being written

std::string HexOf(uint64_t hi, uint64_t lo) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
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
  if (!options_.redis.url.empty()) {
    stats_.redis_enabled = true;
    redis_ = std::make_unique<RedisTier>(options_.redis);
  }
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
      stats_.memory_hits += 1;
      if (disk_entries_.count(key) != 0) {
        TouchDiskLocked(key);
        TouchFile(EntryPath(key));
      }
      return *it->second;
    }
    stats_.memory_misses += 1;
  }
  if (!options_.dir.empty() && fs::exists(EntryPath(key))) {
    const auto t0 = std::chrono::steady_clock::now();
    int64_t file_bytes = 0;
    std::shared_ptr<DocKvEntry> e = ReadEntryFile(key, &file_bytes);
    if (e) {
      TouchFile(EntryPath(key));
      std::shared_ptr<const DocKvEntry> entry = e;
      std::lock_guard<std::mutex> lock(mu_);
      stats_.disk_latency.Record(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      stats_.disk_reads += 1;
      stats_.disk_read_bytes += file_bytes;
      stats_.hits += 1;
      // Indexes a file another server wrote into a shared directory, too.
      RecordDiskFileLocked({false, key, "", file_bytes});
      EvictDiskLocked();
      if (index_.find(key) == index_.end()) InsertLocked(entry);
      return entry;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.disk_misses += options_.dir.empty() ? 0 : 1;
  stats_.misses += 1;
  return nullptr;
}

void DocKvStore::InsertLocked(const std::shared_ptr<const DocKvEntry>& entry) {
  auto it = index_.find(entry->key);
  if (it != index_.end()) {
    stats_.bytes -= (*it->second)->ByteSize();
    lru_.erase(it->second);
    index_.erase(it);
  }
  // An entry larger than the whole budget is used once and not kept.
  if (entry->ByteSize() <= options_.budget_bytes) {
    lru_.push_front(entry);
    index_[entry->key] = lru_.begin();
    stats_.bytes += entry->ByteSize();
  }
  EvictLocked();
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
  if (redis_) QueueRedisEntry(shared);
  std::lock_guard<std::mutex> lock(mu_);
  InsertLocked(shared);
  return shared;
}

void DocKvStore::SetAlias(const std::string& alias, DocAlias info) {
  if (redis_)
    redis_->PutString(RedisAliasKey(alias), EncodeAlias(alias, info, options_.fingerprint));
  std::lock_guard<std::mutex> lock(mu_);
  PutAliasLocked(alias, std::move(info));
  WriteAliasLocked(alias);
}

std::optional<DocAlias> DocKvStore::Lookup(const std::string& alias) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = aliases_.find(alias);
  if (it == aliases_.end()) {
    lock.unlock();
    return redis_ ? LookupRedis(alias) : std::nullopt;
  }
  AliasSlot& slot = it->second;
  alias_lru_.splice(alias_lru_.begin(), alias_lru_, slot.lru);
  if (slot.file) {
    disk_lru_.splice(disk_lru_.begin(), disk_lru_, *slot.file);
    TouchFile(AliasPath(alias));
  }
  return slot.info;
}

bool DocKvStore::Remove(const std::string& alias_or_key) {
  // Redis first, without the lock (a network round trip); an id only Redis
  // knew is then known here too, and goes below.
  bool removed = redis_ && RemoveFromRedis(alias_or_key);
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<DocKey> key;
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
  s.disk_failing = write_failing_;
  if (redis_) s.redis = redis_->stats();
  return s;
}

std::string DocKvStore::EntryPath(const DocKey& key) const {
  return (fs::path(options_.dir) / (key.Hex() + ".kv")).string();
}

std::string DocKvStore::AliasPath(const std::string& alias) const {
  XXH128_hash_t h = XXH3_128bits(alias.data(), alias.size());
  return (fs::path(options_.dir) / "aliases" / (HexOf(h.high64, h.low64) + ".json")).string();
}

// The entry's bytes (entry_codec.h), unless they cannot fit the disk budget.
std::optional<std::string> DocKvStore::EntryFile(const DocKvEntry& e) const {
  std::string file = EncodeEntry(e, options_.fingerprint);
  if (static_cast<int64_t>(file.size()) > options_.disk_budget_bytes) return std::nullopt;
  return file;
}

std::shared_ptr<DocKvEntry> DocKvStore::ReadEntryFile(const DocKey& key, int64_t* file_bytes) {
  const std::string path = EntryPath(key);
  try {
    const std::string file = ReadAll(path);
    *file_bytes = static_cast<int64_t>(file.size());
    return DecodeEntry(file, key, options_.fingerprint, path);
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
  const std::string bytes = EncodeAlias(alias, it->second.info, options_.fingerprint);
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
    // Files written before ids recorded the fingerprint are taken as they are:
    // the directory belongs to one model's server.
    return DecodeAlias(ReadAll(path), path, "", alias);
  } catch (const std::exception& e) {
    spdlog::warn("document cache: ignoring alias file {}: {}", path, e.what());
    return std::nullopt;
  }
}

}  // namespace gritserve
