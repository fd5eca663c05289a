// Named collections of documents for retrieval: each document has a client id,
// its text, optional JSON metadata, its embedding, and its K/V in the document
// store (found again by its text, whose embedding prompt names the store
// entry). Collections live in memory and, with a data directory, on disk:
// one folder per collection holding documents.json (settings, documents and
// their vectors, written atomically) and index.hnsw (the ANN graph, whose
// size and checksum documents.json records). A graph file that does not match
// is reported and rebuilt from the documents; a documents file that cannot be
// read is reported and its folder set aside, never half-used.
// Thread-safe: HTTP threads search (shared) and change (exclusive) a
// collection; nothing here runs on the inference thread.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gritserve/cache/doc_types.h"
#include "gritserve/collection/vector_index.h"

namespace gritserve {

struct CollectionSettings {
  std::string name;
  std::string document_instruction;  // embeds each document (and its K/V pass)
  std::string query_instruction;     // embeds each question
  KvSource kv_source = KvSource::kEmbed;
};

struct CollectionDocument {
  std::string id;      // as stored: the client's id, or "id#k" for the k-th chunk
  std::string parent;  // the client's id the document came in under
  std::string text;
  nlohmann::json metadata;    // an object, or null
  std::vector<float> vector;  // [dim], L2-normalised
};

struct SearchParams {
  int64_t top_k = 10;
  std::optional<double> min_score;
  nlohmann::json filter;  // null, or an object: metadata keys that must equal these values
};

struct SearchHit {
  std::string id;
  float score = 0;
  std::string text;
  nlohmann::json metadata;
};

class Collection {
 public:
  Collection(CollectionSettings settings, int64_t dim, IndexOptions index);

  const CollectionSettings& settings() const { return settings_; }
  int64_t size() const;
  bool uses_graph() const;
  // A stored document by its stored id.
  std::optional<CollectionDocument> Document(const std::string& id) const;

  // Adds documents; every stored document whose parent is one of theirs is
  // replaced. Refused (kTooLarge, nothing changed) when the collection would
  // then hold more than `max_documents`. Returns the documents replaced.
  std::vector<CollectionDocument> Upsert(std::vector<CollectionDocument> docs,
                                         int64_t max_documents);
  // How many documents the collection would hold after Upsert of `docs`.
  int64_t SizeAfter(const std::vector<CollectionDocument>& docs) const;
  // Removes a stored id, or every chunk of a client id. Returns what went.
  std::vector<CollectionDocument> Remove(const std::string& id);
  // Every document (for dropping the collection).
  std::vector<CollectionDocument> Documents() const;

  // Best first; `query` is [dim] and L2-normalised. `exact` forces the scan.
  std::vector<SearchHit> Search(const std::vector<float>& query, const SearchParams& params,
                                bool exact = false) const;

  // Persistence (see the file comment). Save writes the state as of the call.
  void Save(const std::string& dir) const;
  // Reads a folder written by Save. Throws LoadError for a documents file that
  // cannot be used; `*rebuilt` says whether the graph had to be rebuilt.
  static std::unique_ptr<Collection> Load(const std::string& dir, int64_t dim, IndexOptions index,
                                          bool* rebuilt);

 private:
  struct Stored {
    CollectionDocument doc;
    uint64_t label = 0;
  };
  // Builds the index's graph when it needs one, under a shared lock so that
  // searches go on (over the scan or the old graph) while it builds; writers
  // wait. Installed only if nothing changed in between, else built again.
  void BuildGraphIfNeeded();
  std::vector<CollectionDocument> UpsertLocked(std::vector<CollectionDocument> docs,
                                               int64_t max_documents);
  void InsertLocked(CollectionDocument doc);
  void EraseLocked(const std::string& id, std::vector<CollectionDocument>* out);
  // SizeAfter with mu_ held; `parents` are the distinct parents of `docs`.
  int64_t SizeAfterLocked(const std::vector<CollectionDocument>& docs,
                          const std::vector<std::string>& parents) const;

  CollectionSettings settings_;
  int64_t dim_;
  mutable std::shared_mutex mu_;
  std::map<std::string, Stored> docs_;  // by stored id
  std::unordered_map<uint64_t, std::string> id_of_label_;
  std::multimap<std::string, std::string> chunks_of_;  // parent -> stored ids
  VectorIndex index_;
  uint64_t next_label_ = 0;
  mutable std::mutex save_mu_;  // one writer of the folder at a time
  std::mutex build_mu_;         // one graph build at a time
};

struct CollectionOptions {
  std::string data_dir;  // empty: memory only
  IndexOptions index;
  int64_t max_documents = 1000000;  // per collection
  int64_t max_collections = 1000;
};

// A latency histogram for searches (seconds), for /metrics.
struct SearchLatency {
  static constexpr double kBounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                       0.01,   0.025,   0.05,   0.1,   0.25,   1};
  std::vector<int64_t> buckets = std::vector<int64_t>(std::size(kBounds), 0);
  double sum = 0;
  int64_t count = 0;
};

class CollectionStore {
 public:
  // Loads every collection found under data_dir/collections (vectors of
  // another dimension, or damaged documents files, are logged and set aside).
  CollectionStore(CollectionOptions options, int64_t dim);

  const CollectionOptions& options() const { return options_; }
  int64_t dim() const { return dim_; }

  // kConflict when the name exists; kUnprocessable for a bad name.
  std::shared_ptr<Collection> Create(CollectionSettings settings);
  // kNotFound when unknown.
  std::shared_ptr<Collection> Get(const std::string& name) const;
  std::vector<std::shared_ptr<Collection>> List() const;
  // Removes it (and its folder); kNotFound when unknown.
  std::shared_ptr<Collection> Drop(const std::string& name);
  // Writes the collection's folder when there is a data directory. A failed
  // write is logged and counted; the collection keeps serving from memory.
  void Persist(const Collection& c);

  // Searches and records the latency.
  std::vector<SearchHit> Search(const Collection& c, const std::vector<float>& query,
                                const SearchParams& params);
  SearchLatency latency() const;
  int64_t persist_errors() const;
  int64_t index_rebuilds() const;

  // [A-Za-z0-9_-]{1,64}, not starting with '-'.
  static bool ValidName(const std::string& name);

 private:
  std::string Dir(const std::string& name) const;
  void LoadAll();

  CollectionOptions options_;
  int64_t dim_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Collection>> collections_;
  SearchLatency latency_;
  int64_t persist_errors_ = 0;
  int64_t index_rebuilds_ = 0;
};

}  // namespace gritserve
