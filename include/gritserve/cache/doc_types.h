// Torch-free types of the document KV store, for layers that must not include
// tensor headers (server, engine API).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gritserve {

enum class KvSource {
  kEmbed,   // the bidirectional embedding pass (GritLM doc caching; needs a GRIT-trained model)
  kCausal,  // a causal pass over the document alone (prefix caching; right for any causal LM)
};
const char* KvSourceName(KvSource source);

struct DocKey {
  uint64_t hi = 0, lo = 0;
  std::string Hex() const;
  static std::optional<DocKey> FromHex(const std::string& hex);
  bool operator==(const DocKey& o) const { return hi == o.hi && lo == o.lo; }
};
struct DocKeyHash {
  size_t operator()(const DocKey& k) const { return static_cast<size_t>(k.hi ^ (k.lo * 31)); }
};

// What a client id names: enough to find the entry, or to rebuild it.
struct DocAlias {
  DocKey key;
  KvSource source = KvSource::kEmbed;
  std::vector<int32_t> ids;
  size_t text_begin = 0, text_end = 0;
};

struct DocKvStats {
  int64_t entries = 0, bytes = 0, budget = 0, aliases = 0;
  int64_t hits = 0, misses = 0, evictions = 0;
  int64_t disk_reads = 0, disk_writes = 0;
  int64_t disk_errors = 0;        // damaged or foreign files dropped
  int64_t disk_write_errors = 0;  // entry or id files that could not be written
  int64_t disk_files = 0, disk_bytes = 0, disk_budget = 0;  // entry and id files
  int64_t disk_evictions = 0;   // entry files removed to keep the disk budget
  int64_t alias_bytes = 0;      // what the ids take in memory (bounded by the id budget)
  int64_t alias_evictions = 0;  // ids forgotten: for the id budget, or with their evicted entry
  int64_t computed = 0;         // entries built by a forward pass for a generation
};

}  // namespace gritserve
