// A vector index for cosine similarity over L2-normalised vectors (so the inner
// product is the cosine): an exact scan below a size threshold, and an HNSW
// graph (hnswlib) from there on, built once the threshold is crossed and kept
// up to date by incremental adds and deletes. Results carry the exact inner
// product whichever path found them, so the two paths order hits alike.
// Not thread-safe: the owner (Collection) serialises writers against readers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gritserve/kernels/vector_dot.h"

namespace gritserve {

// Defaults for recall first (README "Collections" has the measured trade-off):
// the exact scan is cheap next to embedding the question up to tens of
// thousands of vectors, and a wide graph with a long candidate list keeps
// recall@10 high past that on clustered data, as real embeddings are.
struct IndexOptions {
  int64_t exact_below = 32768;    // fewer vectors than this: exact scan, no graph
  int64_t m = 32;                 // hnswlib M (graph degree)
  int64_t ef_construction = 200;  // hnswlib ef at insertion
  int64_t ef_search = 512;        // hnswlib ef at query time (at least 4 x k)
};

class VectorIndex {
 public:
  struct Hit {
    uint64_t label = 0;
    float score = 0;  // inner product, computed exactly from the stored vector
  };
  using Allowed = std::function<bool(uint64_t label)>;

  VectorIndex(int64_t dim, IndexOptions options);
  ~VectorIndex();
  VectorIndex(const VectorIndex&) = delete;
  VectorIndex& operator=(const VectorIndex&) = delete;

  int64_t dim() const { return dim_; }
  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  bool has_graph() const { return graph_ != nullptr; }
  const IndexOptions& options() const { return options_; }

  // Adds `vector` ([dim]) under `label`, replacing what the label held.
  // `defer_graph` leaves the graph alone (a loader then calls LoadGraph or
  // RebuildGraph once, rather than growing a graph it may throw away).
  void Add(uint64_t label, const float* vector, bool defer_graph = false);
  // False when the label is unknown.
  bool Remove(uint64_t label);

  // Whole-graph builds left to the owner: Add and Remove then only grow or
  // mark an existing graph, and the owner builds one (BuildGraph, which only
  // reads, so searches go on meanwhile) when needs_graph() says so and
  // installs it (InstallGraph) if version() has not moved since.
  void set_owner_builds_graph(bool on) { owner_builds_graph_ = on; }
  // Past the threshold without a graph, or its deleted nodes outnumber the live ones.
  bool needs_graph() const;
  // Counts every change of the stored vectors.
  uint64_t version() const { return version_; }
  struct Graph;
  struct GraphDeleter {  // Graph is complete only in vector_index.cc
    void operator()(Graph* g) const;
  };
  using GraphPtr = std::unique_ptr<Graph, GraphDeleter>;
  GraphPtr BuildGraph() const;
  void InstallGraph(GraphPtr graph);
  // The stored vector of a label, or nullptr.
  const float* Vector(uint64_t label) const;

  // The k best by inner product, best first (ties by label). `allowed`, when
  // set, restricts the candidates; with the graph, a selective filter falls
  // back to the exact scan over the allowed vectors.
  std::vector<Hit> Search(const float* query, int64_t k, const Allowed& allowed = nullptr) const;
  // Always the exact scan (brute force).
  std::vector<Hit> SearchExact(const float* query, int64_t k,
                               const Allowed& allowed = nullptr) const;

  // The graph, written to `path` (a temporary name, then renamed); nothing
  // without a graph. Returns the file's size and XXH3-64 checksum (hex).
  struct FileInfo {
    int64_t bytes = 0;
    std::string xxh3;
  };
  FileInfo SaveGraph(const std::string& path) const;
  // Loads the graph written by SaveGraph when the file's size and checksum
  // match `expected` and it holds exactly the stored vectors under their
  // labels; otherwise leaves the index as it was and says why in `*why`.
  bool LoadGraph(const std::string& path, const FileInfo& expected, std::string* why);
  // Rebuilds the graph from the stored vectors (or drops it below the threshold).
  void RebuildGraph();
  // Sets the graph's query-time candidate list (benchmarks sweep it); like
  // every writer, never while a search runs.
  void set_ef_search(int64_t ef);

 private:
  double Dot(const float* a, const float* b) const;
  static void AddToGraph(Graph& g, uint64_t label, const float* vector);

  int64_t dim_;
  IndexOptions options_;
  kernels::DotF32Fn dot_;  // the ranking product for this CPU and GRITSERVE_CPU_ISA
  std::vector<float> data_;       // [N, dim] rows, one per stored vector
  std::vector<uint64_t> labels_;  // [N] the label of each row
  std::unordered_map<uint64_t, size_t> row_of_;
  std::unique_ptr<Graph> graph_;  // null below exact_below
  bool owner_builds_graph_ = false;
  uint64_t version_ = 0;
};

// XXH3-64 of a file's bytes as 16 hex digits; empty when it cannot be read.
std::string FileChecksum(const std::string& path, int64_t* bytes);

}  // namespace gritserve
