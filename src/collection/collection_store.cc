// Collections on disk (Collection::Save / Load) and the set of collections.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "gritserve/collection/collection.h"
#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;
constexpr int kFormat = 1;
constexpr char kDocumentsFile[] = "documents.json";

// Writes to a temporary name, flushes it to the disk, then renames: a reader
// sees the old file or the new one, never a part.
void WriteFileAtomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(ErrorKind::kInternal, "cannot create " + tmp + ": " + strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = strerror(errno);
      ::close(fd);
      throw Error(ErrorKind::kInternal, "cannot write " + tmp + ": " + why);
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) throw Error(ErrorKind::kInternal, "cannot flush " + tmp);
  fs::rename(tmp, path);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LoadError(path + " cannot be read");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

nlohmann::json FileJson(const std::string& name, const VectorIndex::FileInfo& info) {
  return {{"file", name}, {"bytes", info.bytes}, {"xxh3", info.xxh3}};
}

VectorIndex::FileInfo InfoOf(const JsonFields& f, std::string* name) {
  *name = f.RequireString("file");
  if (name->find('/') != std::string::npos) throw f.RangeError("file", "must be a file name");
  return {f.RequireInt("bytes", 0), f.RequireString("xxh3")};
}

// Files of older generations (and temporary files) left beside the current ones.
void RemoveStale(const std::string& dir, const std::vector<std::string>& keep) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name == kDocumentsFile || std::find(keep.begin(), keep.end(), name) != keep.end()) {
      continue;
    }
    fs::remove(e.path(), ec);
  }
}

}  // namespace

void Collection::Save(const std::string& dir) const {
  std::lock_guard<std::mutex> save(save_mu_);
  std::shared_lock<std::shared_mutex> lock(mu_);
  fs::create_directories(dir);
  // Vectors and graph go to files named by a fresh generation, then
  // documents.json (renamed last) switches to them: a crash at any point
  // leaves a consistent set.
  const std::string gen =
      std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
  nlohmann::json docs = nlohmann::json::array();
  std::string vectors;
  vectors.reserve(docs_.size() * static_cast<size_t>(dim_) * sizeof(float));
  for (const auto& [id, s] : docs_) {
    docs.push_back({{"id", s.doc.id},
                    {"parent", s.doc.parent},
                    {"text", s.doc.text},
                    {"metadata", s.doc.metadata},
                    {"label", s.label}});
    vectors.append(reinterpret_cast<const char*>(s.doc.vector.data()),
                   s.doc.vector.size() * sizeof(float));
  }
  const std::string vec_name = "vectors-" + gen + ".bin";
  WriteFileAtomic(dir + "/" + vec_name, vectors);
  VectorIndex::FileInfo vec_info;
  vec_info.xxh3 = FileChecksum(dir + "/" + vec_name, &vec_info.bytes);
  std::vector<std::string> keep = {vec_name};
  nlohmann::json index = nullptr;
  if (index_.has_graph()) {
    const std::string name = "index-" + gen + ".hnsw";
    index = FileJson(name, index_.SaveGraph(dir + "/" + name));
    keep.push_back(name);
  }
  const nlohmann::json out = {
      {"format", kFormat},
      {"settings",
       {{"name", settings_.name},
        {"document_instruction", settings_.document_instruction},
        {"query_instruction", settings_.query_instruction},
        {"kv_source", settings_.kv_source == KvSource::kCausal ? "causal" : "embed"}}},
      {"dim", dim_},
      {"next_label", next_label_},
      {"vectors", FileJson(vec_name, vec_info)},
      {"index", index},
      {"documents", docs}};
  WriteFileAtomic(dir + "/" + kDocumentsFile, out.dump());
  RemoveStale(dir, keep);
}

std::unique_ptr<Collection> Collection::Load(const std::string& dir, int64_t dim,
                                             IndexOptions index, bool* rebuilt) {
  const std::string path = dir + "/" + kDocumentsFile;
  nlohmann::json j = nlohmann::json::parse(ReadFile(path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw LoadError(path + " is not valid JSON");
  const JsonFields f = JsonFields::File(j, path);
  if (f.RequireInt("format") != kFormat) throw LoadError(path + ": unknown format");
  if (f.RequireInt("dim") != dim) {
    throw LoadError(path + ": vectors of " + std::to_string(f.RequireInt("dim")) +
                    " dimensions, the model has " + std::to_string(dim));
  }
  const nlohmann::json* st = f.Find("settings");
  if (st == nullptr || !st->is_object()) throw f.Missing("settings");
  const JsonFields sf = f.Nested(*st);
  CollectionSettings settings;
  settings.name = sf.RequireString("name");
  settings.document_instruction = sf.String("document_instruction").value_or("");
  settings.query_instruction = sf.String("query_instruction").value_or("");
  settings.kv_source =
      sf.RequireString("kv_source") == "causal" ? KvSource::kCausal : KvSource::kEmbed;
  auto c = std::make_unique<Collection>(settings, dim, index);
  const nlohmann::json* vj = f.Find("vectors");
  if (vj == nullptr || !vj->is_object()) throw f.Missing("vectors");
  std::string vec_name;
  const VectorIndex::FileInfo vec_info = InfoOf(f.Nested(*vj), &vec_name);
  VectorIndex::FileInfo found;
  found.xxh3 = FileChecksum(dir + "/" + vec_name, &found.bytes);
  if (found.xxh3 != vec_info.xxh3 || found.bytes != vec_info.bytes) {
    throw LoadError(dir + "/" + vec_name + " does not match what " + path + " records");
  }
  const std::string vectors = ReadFile(dir + "/" + vec_name);
  const nlohmann::json* docs = f.Find("documents");
  if (docs == nullptr || !docs->is_array()) throw f.Missing("documents");
  const size_t row = static_cast<size_t>(dim) * sizeof(float);
  if (vectors.size() != docs->size() * row) throw LoadError(vec_name + " has the wrong size");
  c->next_label_ = static_cast<uint64_t>(f.RequireInt("next_label", 0));
  for (size_t i = 0; i < docs->size(); ++i) {
    const JsonFields d = f.Nested((*docs)[i]);
    Stored s;
    s.doc.id = d.RequireString("id");
    s.doc.parent = d.RequireString("parent");
    s.doc.text = d.RequireString("text");
    if (const nlohmann::json* m = d.Find("metadata")) s.doc.metadata = *m;
    s.doc.vector.resize(static_cast<size_t>(dim));
    std::memcpy(s.doc.vector.data(), vectors.data() + i * row, row);
    s.label = static_cast<uint64_t>(d.RequireInt("label", 0));
    if (s.label >= c->next_label_ || c->id_of_label_.count(s.label) != 0 ||
        c->docs_.count(s.doc.id) != 0) {
      throw LoadError(path + ": document " + std::to_string(i) + " repeats an id or label");
    }
    c->index_.Add(s.label, s.doc.vector.data(), /*defer_graph=*/true);
    c->id_of_label_[s.label] = s.doc.id;
    c->chunks_of_.emplace(s.doc.parent, s.doc.id);
    c->docs_[s.doc.id] = std::move(s);
  }
  *rebuilt = false;
  const nlohmann::json* ij = f.Find("index");
  const bool want_graph = c->index_.size() >= index.exact_below;
  if (ij != nullptr && ij->is_object() && want_graph) {
    std::string name, why;
    const VectorIndex::FileInfo info = InfoOf(f.Nested(*ij), &name);
    if (c->index_.LoadGraph(dir + "/" + name, info, &why)) return c;
    spdlog::warn("collection '{}': index file {}/{} {}; rebuilding it from the {} documents",
                 settings.name, dir, name, why, c->docs_.size());
    *rebuilt = true;
  } else if (want_graph) {
    spdlog::warn("collection '{}': no index file recorded; building it from the {} documents",
                 settings.name, c->docs_.size());
    *rebuilt = true;
  }
  c->index_.RebuildGraph();
  return c;
}

CollectionStore::CollectionStore(CollectionOptions options, int64_t dim)
    : options_(std::move(options)), dim_(dim) {
  if (!options_.data_dir.empty()) LoadAll();
}

std::string CollectionStore::Dir(const std::string& name) const {
  return options_.data_dir + "/collections/" + name;
}

void CollectionStore::LoadAll() {
  const fs::path root = fs::path(options_.data_dir) / "collections";
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) {
    spdlog::error("cannot create {}: {}; collections are kept in memory only", root.string(),
                  ec.message());
    return;
  }
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || !ValidName(name)) continue;
    try {
      bool rebuilt = false;
      auto c = Collection::Load(e.path().string(), dim_, options_.index, &rebuilt);
      if (c->settings().name != name) throw LoadError("its settings name another collection");
      spdlog::info("collection '{}': {} documents ({})", name, c->size(),
                   c->uses_graph() ? "HNSW index" : "exact search");
      std::shared_ptr<Collection> shared = std::move(c);
      collections_[name] = shared;
      if (rebuilt) {
        index_rebuilds_ += 1;
        Persist(*shared);  // the rebuilt graph replaces the damaged file
      }
    } catch (const std::exception& ex) {
      // Never half-used: the folder is set aside whole, for a person to look at.
      const std::string aside =
          e.path().string() + ".damaged-" +
          std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
      std::error_code rec;
      fs::rename(e.path(), aside, rec);
      spdlog::error("collection '{}' cannot be loaded ({}); its folder is now {}", name, ex.what(),
                    aside);
    }
  }
}

bool CollectionStore::ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '-') return false;
  for (char ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '-') return false;
  }
  return true;
}

std::shared_ptr<Collection> CollectionStore::Create(CollectionSettings settings) {
  if (!ValidName(settings.name)) {
    throw Unprocessable(
        "a collection name must be 1-64 characters of A-Z, a-z, 0-9, '_' and "
        "'-', not starting with '-'");
  }
  std::shared_ptr<Collection> c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (collections_.count(settings.name) != 0) {
      throw Error(ErrorKind::kConflict, "collection '" + settings.name + "' exists");
    }
    if (static_cast<int64_t>(collections_.size()) >= options_.max_collections) {
      throw Error(ErrorKind::kTooLarge, "there are already " + std::to_string(collections_.size()) +
                                            " collections, the limit");
    }
    c = std::make_shared<Collection>(settings, dim_, options_.index);
    collections_[settings.name] = c;
  }
  Persist(*c);
  return c;
}

std::shared_ptr<Collection> CollectionStore::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = collections_.find(name);
  if (it == collections_.end()) throw NotFound("unknown collection '" + name + "'");
  return it->second;
}

std::vector<std::shared_ptr<Collection>> CollectionStore::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<Collection>> out;
  for (const auto& [name, c] : collections_) out.push_back(c);
  return out;
}

std::shared_ptr<Collection> CollectionStore::Drop(const std::string& name) {
  std::shared_ptr<Collection> c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = collections_.find(name);
    if (it == collections_.end()) throw NotFound("unknown collection '" + name + "'");
    c = it->second;
    collections_.erase(it);
  }
  if (!options_.data_dir.empty()) {
    std::error_code ec;
    fs::remove_all(Dir(name), ec);
    if (ec) spdlog::error("cannot remove {}: {}", Dir(name), ec.message());
  }
  return c;
}

void CollectionStore::Persist(const Collection& c) {
  if (options_.data_dir.empty()) return;
  {
    // A collection dropped meanwhile is not written back.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = collections_.find(c.settings().name);
    if (it == collections_.end() || it->second.get() != &c) return;
  }
  try {
    c.Save(Dir(c.settings().name));
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(mu_);
    persist_errors_ += 1;
    spdlog::error("collection '{}' could not be written to {}: {}", c.settings().name,
                  Dir(c.settings().name), e.what());
  }
}

std::vector<SearchHit> CollectionStore::Search(const Collection& c, const std::vector<float>& query,
                                               const SearchParams& params) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<SearchHit> hits = c.Search(query, params);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < std::size(SearchLatency::kBounds); ++i) {
    if (s <= SearchLatency::kBounds[i]) latency_.buckets[i] += 1;
  }
  latency_.sum += s;
  latency_.count += 1;
  return hits;
}

SearchLatency CollectionStore::latency() const {
  std::lock_guard<std::mutex> lock(mu_);
  return latency_;
}

int64_t CollectionStore::persist_errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return persist_errors_;
}

int64_t CollectionStore::index_rebuilds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return index_rebuilds_;
}

}  // namespace gritserve
