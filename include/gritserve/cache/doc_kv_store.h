// The document KV store: the keys and values a forward pass computed for a
// document, kept so that a later generation over that document prefills only
// its own prompt. Entries are content-addressed (model fingerprint, template,
// KV source, token ids); client ids are aliases. In memory under a byte budget
// (LRU), optionally mirrored to a directory that survives restarts.
// Thread-safe: HTTP threads resolve aliases, the inference thread reads and
// writes entries.
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
    std::string dir;  // empty: memory only
    at::ScalarType storage_dtype = at::kFloat;
    std::string fingerprint;  // identifies the model; part of every key
  };
  // Creates the directory if needed and loads the aliases found there.
  explicit DocKvStore(Options options);

  DocKey MakeKey(const std::string& template_name, KvSource source,
                 const std::vector<int32_t>& ids) const;

  // Memory first, then disk (a damaged or foreign file is deleted and counts
  // as a miss). Counts a hit or a miss.
  std::shared_ptr<const DocKvEntry> Get(const DocKey& key);
  // Stores (converting to the storage dtype), evicts least recently used
  // entries past the budget, and writes the disk copy.
  std::shared_ptr<const DocKvEntry> Put(DocKvEntry entry);

  void SetAlias(const std::string& alias, DocAlias info);
  std::optional<DocAlias> Lookup(const std::string& alias) const;
  // Removes an alias (and its entry), or an entry by its hex key. False if unknown.
  bool Remove(const std::string& alias_or_key);

  DocKvStats stats() const;
  void CountComputed();
  at::ScalarType storage_dtype() const { return options_.storage_dtype; }

 private:
  using Lru = std::list<std::shared_ptr<const DocKvEntry>>;
  void Touch(Lru::iterator it);
  void EvictLocked();
  std::string EntryPath(const DocKey& key) const;
  std::string AliasPath(const std::string& alias) const;
  void WriteEntryFile(const DocKvEntry& e);
  std::shared_ptr<DocKvEntry> ReadEntryFile(const DocKey& key);
  void LoadAliases();

  Options options_;
  mutable std::mutex mu_;
  Lru lru_;  // most recent first
  std::unordered_map<DocKey, Lru::iterator, DocKeyHash> index_;
  std::unordered_map<std::string, DocAlias> aliases_;
  DocKvStats stats_;
};

}  // namespace gritserve
