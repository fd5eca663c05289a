// Collection: documents, their vectors and the index over them, in memory.
#include "gritserve/collection/collection.h"

#include <algorithm>

#include "gritserve/common/error.h"

namespace gritserve {
namespace {

// The distinct parents of `docs`: adding a document replaces every chunk of its parent.
std::vector<std::string> ParentsOf(const std::vector<CollectionDocument>& docs) {
  std::vector<std::string> parents;
  for (const auto& d : docs) parents.push_back(d.parent);
  std::sort(parents.begin(), parents.end());
  parents.erase(std::unique(parents.begin(), parents.end()), parents.end());
  return parents;
}

// Metadata equality on top-level keys: every key of the filter must be
// present with an equal value.
bool Matches(const nlohmann::json& metadata, const nlohmann::json& filter) {
  if (filter.is_null()) return true;
  if (!metadata.is_object()) return filter.empty();
  for (auto it = filter.begin(); it != filter.end(); ++it) {
    auto m = metadata.find(it.key());
    if (m == metadata.end() || *m != it.value()) return false;
  }
  return true;
}

}  // namespace

Collection::Collection(CollectionSettings settings, int64_t dim, IndexOptions index)
    : settings_(std::move(settings)), dim_(dim), index_(dim, index) {
  index_.set_owner_builds_graph(true);
}

void Collection::BuildGraphIfNeeded() {
  // Waiting here (rather than leaving it to a build under way) means no
  // change can slip in after that build's last check and stay unindexed.
  std::lock_guard<std::mutex> building(build_mu_);
  for (int attempt = 0; attempt < 3; ++attempt) {
    VectorIndex::GraphPtr graph;
    uint64_t version = 0;
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      if (!index_.needs_graph()) return;
      version = index_.version();
      graph = index_.BuildGraph();  // minutes for a large collection
    }
    std::unique_lock<std::shared_mutex> lock(mu_);
    // A writer may have come between the two locks.
    if (index_.version() == version) {
      index_.InstallGraph(std::move(graph));
      return;
    }
  }
  // Writers kept overtaking the build: build under the write lock.
  std::unique_lock<std::shared_mutex> lock(mu_);
  if (index_.needs_graph()) index_.RebuildGraph();
}

int64_t Collection::size() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return static_cast<int64_t>(docs_.size());
}

bool Collection::uses_graph() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return index_.has_graph();
}

std::optional<CollectionDocument> Collection::Document(const std::string& id) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = docs_.find(id);
  if (it == docs_.end()) return std::nullopt;
  return it->second.doc;
}

std::vector<CollectionDocument> Collection::Documents() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<CollectionDocument> out;
  out.reserve(docs_.size());
  for (const auto& [id, s] : docs_) out.push_back(s.doc);
  return out;
}

void Collection::InsertLocked(CollectionDocument doc) {
  if (static_cast<int64_t>(doc.vector.size()) != dim_) {
    throw Error(ErrorKind::kInternal, "a document vector has " + std::to_string(doc.vector.size()) +
                                          " dimensions, not " + std::to_string(dim_));
  }
  const uint64_t label = next_label_++;
  index_.Add(label, doc.vector.data());
  id_of_label_[label] = doc.id;
  chunks_of_.emplace(doc.parent, doc.id);
  const std::string id = doc.id;
  docs_[id] = {std::move(doc), label};
}

void Collection::EraseLocked(const std::string& id, std::vector<CollectionDocument>* out) {
  auto it = docs_.find(id);
  if (it == docs_.end()) return;
  index_.Remove(it->second.label);
  id_of_label_.erase(it->second.label);
  auto range = chunks_of_.equal_range(it->second.doc.parent);
  for (auto c = range.first; c != range.second; ++c) {
    if (c->second == id) {
      chunks_of_.erase(c);
      break;
    }
  }
  out->push_back(std::move(it->second.doc));
  docs_.erase(it);
}

int64_t Collection::SizeAfterLocked(const std::vector<CollectionDocument>& docs,
                                    const std::vector<std::string>& parents) const {
  int64_t n = static_cast<int64_t>(docs_.size());
  for (const auto& p : parents) n -= static_cast<int64_t>(chunks_of_.count(p));
  return n + static_cast<int64_t>(docs.size());
}

int64_t Collection::SizeAfter(const std::vector<CollectionDocument>& docs) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return SizeAfterLocked(docs, ParentsOf(docs));
}

std::vector<CollectionDocument> Collection::Upsert(std::vector<CollectionDocument> docs,
                                                   int64_t max_documents) {
  std::vector<CollectionDocument> replaced = UpsertLocked(std::move(docs), max_documents);
  BuildGraphIfNeeded();
  return replaced;
}

std::vector<CollectionDocument> Collection::UpsertLocked(std::vector<CollectionDocument> docs,
                                                         int64_t max_documents) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  // Checked under the lock: another request may have added since SizeAfter.
  const std::vector<std::string> parents = ParentsOf(docs);
  const int64_t n = SizeAfterLocked(docs, parents);
  if (n > max_documents) {
    throw Error(ErrorKind::kTooLarge,
                "collection '" + settings_.name + "' would hold " + std::to_string(n) +
                    " documents, more than the limit of " + std::to_string(max_documents));
  }
  std::vector<CollectionDocument> replaced;
  for (const auto& p : parents) {
    std::vector<std::string> ids;
    auto range = chunks_of_.equal_range(p);
    for (auto c = range.first; c != range.second; ++c) ids.push_back(c->second);
    for (const auto& id : ids) EraseLocked(id, &replaced);
  }
  for (auto& d : docs) InsertLocked(std::move(d));
  return replaced;
}

std::vector<CollectionDocument> Collection::Remove(const std::string& id) {
  std::vector<CollectionDocument> removed;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (docs_.count(id) != 0) {
      EraseLocked(id, &removed);
    } else {
      std::vector<std::string> ids;
      auto range = chunks_of_.equal_range(id);
      for (auto c = range.first; c != range.second; ++c) ids.push_back(c->second);
      for (const auto& s : ids) EraseLocked(s, &removed);
    }
  }
  BuildGraphIfNeeded();  // a compaction, once deleted nodes outnumber the live ones
  return removed;
}

std::vector<SearchHit> Collection::Search(const std::vector<float>& query,
                                          const SearchParams& params, bool exact) const {
  if (static_cast<int64_t>(query.size()) != dim_) {
    throw Error(ErrorKind::kInternal, "a query vector of the wrong dimension");
  }
  std::shared_lock<std::shared_mutex> lock(mu_);
  VectorIndex::Allowed allowed;
  if (!params.filter.is_null()) {
    allowed = [this, &params](uint64_t label) {
      auto id = id_of_label_.find(label);
      return id != id_of_label_.end() && Matches(docs_.at(id->second).doc.metadata, params.filter);
    };
  }
  const auto hits = exact ? index_.SearchExact(query.data(), params.top_k, allowed)
                          : index_.Search(query.data(), params.top_k, allowed);
  std::vector<SearchHit> out;
  for (const auto& h : hits) {
    if (params.min_score && h.score < *params.min_score) break;  // best first
    const Stored& s = docs_.at(id_of_label_.at(h.label));
    out.push_back({s.doc.id, h.score, s.doc.text, s.doc.metadata});
  }
  return out;
}

}  // namespace gritserve
