// Torch-free types of the document KV store, for layers that must not include
// tensor headers (server, engine API).
#pragma once

#include <array>
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

// How long fetches from a tier took, as a Prometheus histogram.
struct FetchLatency {
  static constexpr std::array<double, 12> kBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                     0.05,   0.1,   0.25,   0.5,   1,    2.5};
  std::array<int64_t, 12> buckets{};  // cumulative: fetches within each bound
  double sum = 0;                     // seconds
  int64_t count = 0;
  void Record(double seconds) {
    for (size_t i = 0; i < kBounds.size(); ++i) buckets[i] += seconds <= kBounds[i] ? 1 : 0;
    sum += seconds;
    count += 1;
  }
};

// The Redis tier's side of the store (all zero without --cache-redis).
struct RedisTierStats {
  bool up = false;                        // reachable when last tried (else degraded)
  int64_t hits = 0, misses = 0;           // entry lookups answered by Redis, and not
  int64_t id_hits = 0, id_misses = 0;     // client ids looked up there
  int64_t read_bytes = 0;                 // entry bytes fetched
  int64_t writes = 0, written_bytes = 0;  // entries and ids stored
  int64_t write_drops = 0;                // writes given up: the queue full, or Redis unreachable
  int64_t errors = 0;                     // commands that failed or timed out
  int64_t outages = 0;                    // times Redis became unreachable
  int64_t corrupt = 0;                    // values found damaged or foreign (deleted, recomputed)
  FetchLatency latency;                   // one pipelined round trip per request
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
  // Per tier. Memory: lookups by the inference thread (entries fetched from
  // Redis ahead of a request count here once fetched). Disk: its hits are
  // disk_reads.
  int64_t memory_hits = 0, memory_misses = 0;
  int64_t disk_misses = 0, disk_read_bytes = 0;
  bool disk_failing = false;  // the last disk write failed
  FetchLatency disk_latency;
  bool redis_enabled = false;
  RedisTierStats redis;
};

}  // namespace gritserve
