// The document KV store: the keys and values a forward pass computed for a
// document, kept so that a later generation over that document prefills only
// its own prompt. Entries are content-addressed (model fingerprint, template,
// KV source, token ids); client ids are aliases. In memory under a byte budget
// (LRU), optionally mirrored to a directory that survives restarts, under a
// byte budget of its own (LRU over entry and id files). An unwritable
// directory leaves the memory tier serving: failed writes are counted, and
// logged once per run of failures. Optionally shared with other servers
// through Redis (redis_tier.h): below memory, beside or instead of the disk.
// Thread-safe: HTTP threads resolve aliases, the inference thread reads and
// writes entries. Redis is read only on HTTP threads (Prefetch, Lookup,
// Remove) and written by its own writer thread: the inference thread never
// waits on the network.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "gritserve/cache/doc_types.h"
#include "gritserve/cache/redis_tier.h"

namespace gritserve {

struct DocKvEntry {
  DocKey key;
  KvSource source = KvSource::kCausal;
  std::vector<int32_t> ids;             // every token whose K/V is stored
  size_t text_begin = 0, text_end = 0;  // the document text's span within ids
  // Per layer [Hkv, T, D] in the storage dtype; keys are rotated for positions 0..T-1.
  std::vector<at::Tensor> keys, values;
  // Pooled final hidden states over the text span, unnormalised (embed entries only).
  std::vector<float> mean, last;

  int64_t tokens() const { return static_cast<int64_t>(ids.size()); }
  int64_t ByteSize() const;
};

class DocKvStore {
 public:
  struct Options {
    int64_t budget_bytes = 1LL << 30;
    std::string dir;                        // empty: memory only
    int64_t disk_budget_bytes = 8LL << 30;  // entry and id files in `dir` together
    // Ids in memory (their token ids, name and bookkeeping); past it the least
    // recently used ids are forgotten (and their files removed).
    int64_t alias_budget_bytes = 64LL << 20;
    at::ScalarType storage_dtype = at::kFloat;
    std::string fingerprint;   // identifies the model; part of every key
    RedisTier::Options redis;  // an empty url: no Redis tier
  };
  // Creates the directory if needed, loads the aliases found there, indexes
  // the entry files (least recently used by modification time) and trims
  // both to their budgets. A directory that cannot be created is logged and
  // left: the store then serves from memory.
  explicit DocKvStore(Options options);

  DocKey MakeKey(const std::string& template_name, KvSource source,
                 const std::vector<int32_t>& ids) const;

  // Memory first, then disk (a damaged or foreign file is deleted and counts
  // as a miss). Counts a hit or a miss; a hit is a use in both tiers. Never
  // reads Redis: the inference thread calls it.
  std::shared_ptr<const DocKvEntry> Get(const DocKey& key);
  // HTTP threads, before a job is queued: entries of `keys` that memory does
  // not hold are fetched from Redis (one round trip for all of them) into
  // memory, for Get to find. A damaged or foreign value is deleted there and
  // left to be recomputed. Without Redis, or with Redis down, does nothing.
  void Prefetch(const std::vector<DocKey>& keys);
  // Stores (converting to the storage dtype), evicts least recently used
  // entries past the budget, and writes the disk copy (evicting least
  // recently used files past the disk budget; an entry's ids go with it),
  // and queues the Redis copy.
  std::shared_ptr<const DocKvEntry> Put(DocKvEntry entry);

  // Also queued for Redis.
  void SetAlias(const std::string& alias, DocAlias info);
  // A lookup is a use of the id. An id this server does not know is looked
  // up in Redis (HTTP threads only).
  std::optional<DocAlias> Lookup(const std::string& alias);
  // Removes an alias (and its entry), or an entry by its hex key, here and in
  // Redis. False if unknown.
  bool Remove(const std::string& alias_or_key);
  // Waits until queued Redis writes are done (tests, benchmarks).
  void FlushRedis();

  DocKvStats stats() const;
  void CountComputed();
  at::ScalarType storage_dtype() const { return options_.storage_dtype; }

 private:
  using Lru = std::list<std::shared_ptr<const DocKvEntry>>;
  // A file of the disk tier: an entry (by key) or an id (by name).
  struct DiskFile {
    bool is_alias = false;
    DocKey key;
    std::string alias;
    int64_t bytes = 0;
  };
  using DiskLru = std::list<DiskFile>;
  struct AliasSlot {
    DocAlias info;
    int64_t bytes = 0;  // counted against alias_budget_bytes
    std::list<std::string>::iterator lru;
    std::optional<DiskLru::iterator> file;
  };

  void Touch(Lru::iterator it);
  void EvictLocked();
  // Into memory as the most recently used (replacing an older copy), unless
  // larger than the whole budget; then evicts past the budget.
  void InsertLocked(const std::shared_ptr<const DocKvEntry>& entry);
  // Redis keys: entries by their content key, ids hashed with the model's
  // fingerprint (an id names tokens of one model).
  std::string RedisEntryKey(const DocKey& key) const;
  std::string RedisAliasKey(const std::string& alias) const;
  void QueueRedisEntry(const std::shared_ptr<const DocKvEntry>& entry);
  std::optional<DocAlias> LookupRedis(const std::string& alias);
  // Deletes an id (with its entry) or an entry by hex key from Redis; true
  // if Redis held it.
  bool RemoveFromRedis(const std::string& alias_or_key);
  std::string EntryPath(const DocKey& key) const;
  std::string AliasPath(const std::string& alias) const;
  // The bytes of an entry file, or nothing when it cannot fit the disk budget.
  std::optional<std::string> EntryFile(const DocKvEntry& e) const;
  std::shared_ptr<DocKvEntry> ReadEntryFile(const DocKey& key, int64_t* file_bytes);
  // The id and what it names, or nothing (logged) for a file that is not one.
  static std::optional<DocAlias> ReadAliasFile(const std::string& path, std::string* alias);
  void ScanDirectory();

  // Disk tier bookkeeping; all with mu_ held.
  void RecordDiskFileLocked(DiskFile file);
  void TouchDiskLocked(const DocKey& key);
  void ForgetDiskEntryLocked(const DocKey& key);
  void EvictDiskLocked();
  void CountWriteLocked(bool ok, const std::string& what, const std::string& error);
  // Aliases; all with mu_ held.
  // Adds or replaces an id as the most recently used, then forgets the least
  // recently used ones past the id budget.
  void PutAliasLocked(const std::string& alias, DocAlias info);
  void DropAliasLocked(const std::string& alias);  // with its file
  void DropAliasesOfLocked(const DocKey& key);
  void WriteAliasLocked(const std::string& alias);

  Options options_;
  mutable std::mutex mu_;
  Lru lru_;  // most recent first
  std::unordered_map<DocKey, Lru::iterator, DocKeyHash> index_;
  std::unordered_map<std::string, AliasSlot> aliases_;
  std::list<std::string> alias_lru_;  // most recent first
  std::unordered_multimap<DocKey, std::string, DocKeyHash> aliases_of_;
  int64_t alias_bytes_ = 0;
  DiskLru disk_lru_;  // most recent first
  std::unordered_map<DocKey, DiskLru::iterator, DocKeyHash> disk_entries_;
  bool write_failing_ = false;  // the last write failed (logged once until one succeeds)
  DocKvStats stats_;
  std::unique_ptr<RedisTier> redis_;  // null without --cache-redis
};

}  // namespace gritserve
