#include "gritserve/collection/vector_index.h"

#include <hnswlib/hnswlib.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "gritserve/common/error.h"
#include "gritserve/kernels/vector_dot.h"

namespace gritserve {

namespace {

// hnswlib's inner-product distance (1 - a.b) over the kernels' float dot
// product; hnswlib's own space picks its SIMD width at compile time, which is
// SSE here. The parameter hnswlib hands back is the space's DistParam, whose
// first member is the dimension: hnswlib reads a size_t there when it loads.
struct DistParam {
  size_t dim;
  kernels::DotF32Fn dot;
};

float InnerProductDistance(const void* a, const void* b, const void* param) {
  const auto* p = static_cast<const DistParam*>(param);
  return 1.0f - p->dot(static_cast<const float*>(a), static_cast<const float*>(b), p->dim);
}

class DotSpace : public hnswlib::SpaceInterface<float> {
 public:
  DotSpace(size_t dim, kernels::DotF32Fn dot) : param_{dim, dot} {}
  size_t get_data_size() override { return param_.dim * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return InnerProductDistance; }
  void* get_dist_func_param() override { return &param_; }

 private:
  DistParam param_;
};

}  // namespace

struct VectorIndex::Graph {
  Graph(int64_t dim, kernels::DotF32Fn dot) : space(static_cast<size_t>(dim), dot) {}
  DotSpace space;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw;
  int64_t deleted = 0;  // marked deleted, still taking a slot in the graph
};

namespace {

constexpr int64_t kEfPerHit = 4;

// Best first; equal scores by label, so both paths agree on ties.
bool Better(const VectorIndex::Hit& a, const VectorIndex::Hit& b) {
  return a.score != b.score ? a.score > b.score : a.label < b.label;
}

void KeepBest(std::vector<VectorIndex::Hit>& hits, int64_t k) {
  const size_t n = std::min(hits.size(), static_cast<size_t>(std::max<int64_t>(k, 0)));
  std::partial_sort(hits.begin(), hits.begin() + static_cast<std::ptrdiff_t>(n), hits.end(),
                    Better);
  hits.resize(n);
}

}  // namespace

VectorIndex::VectorIndex(int64_t dim, IndexOptions options)
    : dim_(dim), options_(options), dot_(kernels::SelectDotF32(kernels::Dispatch::Current())) {
  if (dim <= 0) throw Unprocessable("a vector index needs a positive dimension");
}

VectorIndex::~VectorIndex() = default;

// Four double accumulators: exact enough that the order matches a plain
// double-precision brute force, and independent lanes the compiler vectorises.
double VectorIndex::Dot(const float* a, const float* b) const {
  double s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= dim_; i += 4) {
    for (int j = 0; j < 4; ++j) s[j] += static_cast<double>(a[i + j]) * b[i + j];
  }
  for (; i < dim_; ++i) s[0] += static_cast<double>(a[i]) * b[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

const float* VectorIndex::Vector(uint64_t label) const {
  auto it = row_of_.find(label);
  return it == row_of_.end() ? nullptr : data_.data() + it->second * static_cast<size_t>(dim_);
}

void VectorIndex::Add(uint64_t label, const float* vector, bool defer_graph) {
  const size_t d = static_cast<size_t>(dim_);
  ++version_;
  auto it = row_of_.find(label);
  if (it != row_of_.end()) {
    std::memcpy(data_.data() + it->second * d, vector, d * sizeof(float));
  } else {
    row_of_[label] = labels_.size();
    labels_.push_back(label);
    data_.insert(data_.end(), vector, vector + d);
  }
  if (defer_graph) return;
  if (graph_) {
    AddToGraph(*graph_, label, vector);
  } else if (size() >= options_.exact_below && !owner_builds_graph_) {
    RebuildGraph();
  }
}

void VectorIndex::AddToGraph(Graph& g, uint64_t label, const float* vector) {
  auto& h = *g.hnsw;
  if (h.label_lookup_.count(label) == 0 && h.cur_element_count >= h.max_elements_) {
    h.resizeIndex(std::max<size_t>(h.max_elements_ * 2, 1024));
  }
  h.addPoint(vector, label);
}

bool VectorIndex::Remove(uint64_t label) {
  auto it = row_of_.find(label);
  if (it == row_of_.end()) return false;
  ++version_;
  const size_t d = static_cast<size_t>(dim_);
  const size_t row = it->second, last = labels_.size() - 1;
  if (row != last) {
    // The last row moves into the hole: rows stay dense for the scan.
    std::memcpy(data_.data() + row * d, data_.data() + last * d, d * sizeof(float));
    labels_[row] = labels_[last];
    row_of_[labels_[row]] = row;
  }
  labels_.pop_back();
  data_.resize(labels_.size() * d);
  row_of_.erase(label);
  if (graph_) {
    graph_->hnsw->markDelete(label);
    graph_->deleted += 1;
    if (size() < options_.exact_below) {
      graph_.reset();  // the scan again: nothing to build
    } else if (needs_graph() && !owner_builds_graph_) {
      RebuildGraph();
    }
  }
  return true;
}

bool VectorIndex::needs_graph() const {
  if (size() < options_.exact_below) return false;
  // Deleted nodes still cost search time and memory: compact once they
  // outnumber the live ones.
  return !graph_ || (graph_->deleted > 1024 && graph_->deleted > size());
}

void VectorIndex::GraphDeleter::operator()(Graph* g) const { delete g; }

VectorIndex::GraphPtr VectorIndex::BuildGraph() const {
  GraphPtr g(new Graph(dim_, dot_));
  g->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(
      &g->space, std::max<size_t>(labels_.size() * 2, 1024), static_cast<size_t>(options_.m),
      static_cast<size_t>(options_.ef_construction));
  g->hnsw->setEf(static_cast<size_t>(options_.ef_search));
  for (size_t r = 0; r < labels_.size(); ++r) {
    AddToGraph(*g, labels_[r], data_.data() + r * static_cast<size_t>(dim_));
  }
  return g;
}

void VectorIndex::InstallGraph(GraphPtr graph) { graph_.reset(graph.release()); }

void VectorIndex::RebuildGraph() {
  graph_.reset();
  if (size() >= options_.exact_below) InstallGraph(BuildGraph());
}

void VectorIndex::set_ef_search(int64_t ef) {
  options_.ef_search = ef;
  if (graph_) graph_->hnsw->setEf(static_cast<size_t>(ef));
}

std::vector<VectorIndex::Hit> VectorIndex::SearchExact(const float* query, int64_t k,
                                                       const Allowed& allowed) const {
  const size_t d = static_cast<size_t>(dim_);
  std::vector<Hit> hits;
  hits.reserve(labels_.size());
  for (size_t r = 0; r < labels_.size(); ++r) {
    if (allowed && !allowed(labels_[r])) continue;
    hits.push_back({labels_[r], dot_(query, data_.data() + r * d, d)});
  }
  if (k <= 0) return {};
  if (static_cast<int64_t>(hits.size()) > k) {
    // Rows whose float score is below the k-th best by more than float
    // rounding can reach (the rows are unit vectors) cannot be in the answer.
    std::nth_element(hits.begin(), hits.begin() + (k - 1), hits.end(),
                     [](const Hit& a, const Hit& b) { return a.score > b.score; });
    const float cut = hits[static_cast<size_t>(k - 1)].score -
                      1e-4f * static_cast<float>(std::sqrt(Dot(query, query)));
    hits.erase(
        std::remove_if(hits.begin(), hits.end(), [cut](const Hit& h) { return h.score < cut; }),
        hits.end());
  }
  for (auto& h : hits) h.score = static_cast<float>(Dot(query, Vector(h.label)));
  KeepBest(hits, k);
  return hits;
}

std::vector<VectorIndex::Hit> VectorIndex::Search(const float* query, int64_t k,
                                                  const Allowed& allowed) const {
  if (!graph_ || k <= 0) return SearchExact(query, k, allowed);
  // At least kEfPerHit candidates per hit wanted, whatever ef_search says: a
  // graph's recall at a fixed ef falls as k grows. The extra answers are
  // scored exactly and cut to k.
  int64_t want = k * kEfPerHit;
  if (allowed) {
    int64_t n = 0;
    for (uint64_t l : labels_) n += allowed(l) ? 1 : 0;
    if (n < options_.exact_below) return SearchExact(query, k, allowed);
    // Ask the graph for more until enough of its answers pass the filter.
    want = std::max<int64_t>(k * 4 * kEfPerHit, 64);
  }
  for (;;) {
    const int64_t ask = std::min(want, size());
    // searchKnn searches with max(ef, k) candidates; ef is set once, so
    // concurrent readers never write to the graph.
    auto queue = graph_->hnsw->searchKnn(query, static_cast<size_t>(ask));
    std::vector<Hit> hits;
    while (!queue.empty()) {
      const uint64_t label = queue.top().second;
      queue.pop();
      if (allowed && !allowed(label)) continue;
      const float* v = Vector(label);
      if (v != nullptr) hits.push_back({label, static_cast<float>(Dot(query, v))});
    }
    if (static_cast<int64_t>(hits.size()) >= k || ask >= size()) {
      KeepBest(hits, k);
      return hits;
    }
    want *= 4;
  }
}

VectorIndex::FileInfo VectorIndex::SaveGraph(const std::string& path) const {
  FileInfo info;
  if (!graph_) return info;
  const std::string tmp = path + ".tmp";
  graph_->hnsw->saveIndex(tmp);
  info.xxh3 = FileChecksum(tmp, &info.bytes);
  if (info.xxh3.empty()) throw Error(ErrorKind::kInternal, "cannot write " + tmp);
  std::filesystem::rename(tmp, path);
  return info;
}

bool VectorIndex::LoadGraph(const std::string& path, const FileInfo& expected, std::string* why) {
  int64_t bytes = 0;
  const std::string sum = FileChecksum(path, &bytes);
  if (sum.empty()) {
    *why = "cannot be read";
    return false;
  }
  if (bytes != expected.bytes || sum != expected.xxh3) {
    *why = "has " + std::to_string(bytes) + " bytes, checksum " + sum + ", where " +
           std::to_string(expected.bytes) + " bytes, checksum " + expected.xxh3 + " were written";
    return false;
  }
  auto g = std::make_unique<Graph>(dim_, dot_);
  try {
    g->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(&g->space, path);
  } catch (const std::exception& e) {
    *why = std::string("cannot be loaded: ") + e.what();
    return false;
  }
  auto& h = *g->hnsw;
  for (size_t i = 0; i < h.cur_element_count; ++i) {
    g->deleted += h.isMarkedDeleted(static_cast<hnswlib::tableint>(i)) ? 1 : 0;
  }
  if (static_cast<int64_t>(h.cur_element_count) - g->deleted != size() ||
      h.data_size_ != static_cast<size_t>(dim_) * sizeof(float)) {
    *why = "does not hold the collection's vectors";
    return false;
  }
  for (size_t r = 0; r < labels_.size(); ++r) {
    auto found = h.label_lookup_.find(labels_[r]);
    if (found == h.label_lookup_.end() || h.isMarkedDeleted(found->second) ||
        std::memcmp(h.getDataByInternalId(found->second),
                    data_.data() + r * static_cast<size_t>(dim_), h.data_size_) != 0) {
      *why = "does not hold the collection's vectors";
      return false;
    }
  }
  h.setEf(static_cast<size_t>(options_.ef_search));
  graph_ = std::move(g);
  return true;
}

std::string FileChecksum(const std::string& path, int64_t* bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  std::vector<char> buf(1 << 20);
  int64_t n = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize got = in.gcount();
    if (got <= 0) break;
    XXH3_64bits_update(st, buf.data(), static_cast<size_t>(got));
    n += got;
  }
  const uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  *bytes = n;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

}  // namespace gritserve
