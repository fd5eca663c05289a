// The collection layer without a model: the vector index (exact path equals
// brute force, the HNSW path's recall, deletes), metadata filters, and the
// on-disk form (restart gives the same answers; a damaged graph file is
// detected and rebuilt; a damaged documents file is refused whole).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "gritserve/collection/collection.h"
#include "gritserve/collection/vector_index.h"
#include "gritserve/common/error.h"
#include "test_util.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;

std::vector<float> RandomUnit(std::mt19937& rng, int64_t dim) {
  std::normal_distribution<float> n(0, 1);
  std::vector<float> v(static_cast<size_t>(dim));
  double s = 0;
  for (auto& x : v) {
    x = n(rng);
    s += static_cast<double>(x) * x;
  }
  for (auto& x : v) x = static_cast<float>(x / std::sqrt(s));
  return v;
}

// The plain answer: every vector's inner product in double, best first.
std::vector<std::pair<uint64_t, double>> BruteForce(const std::vector<std::vector<float>>& vecs,
                                                    const std::vector<uint64_t>& labels,
                                                    const std::vector<float>& q, size_t k) {
  std::vector<std::pair<uint64_t, double>> all;
  for (size_t i = 0; i < vecs.size(); ++i) {
    double s = 0;
    for (size_t d = 0; d < q.size(); ++d) s += static_cast<double>(q[d]) * vecs[i][d];
    all.push_back({labels[i], s});
  }
  std::sort(all.begin(), all.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  all.resize(std::min(k, all.size()));
  return all;
}

TEST(VectorIndexTest, ExactSearchEqualsBruteForce) {
  std::mt19937 rng(1);
  const int64_t dim = 48;
  VectorIndex index(dim, IndexOptions{});
  std::vector<std::vector<float>> vecs;
  std::vector<uint64_t> labels;
  for (uint64_t i = 0; i < 700; ++i) {
    vecs.push_back(RandomUnit(rng, dim));
    labels.push_back(i * 3 + 7);
    index.Add(labels.back(), vecs.back().data());
  }
  ASSERT_FALSE(index.has_graph());
  for (int t = 0; t < 20; ++t) {
    const auto q = RandomUnit(rng, dim);
    const auto want = BruteForce(vecs, labels, q, 25);
    const auto got = index.Search(q.data(), 25);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].label, want[i].first) << "rank " << i;
      EXPECT_NEAR(got[i].score, want[i].second, 1e-6) << "rank " << i;
    }
  }
}

// The graph at the server's defaults (only the threshold lowered, so the graph
// answers) on random unit vectors of the 0.5B model's width: the hardest data
// for a graph index (every point about as far from every other), so real
// embeddings, which cluster, do at least as well.
TEST(VectorIndexTest, HnswRecallAtTenAtTheDefaults) {
  std::mt19937 rng(2);
  const int64_t dim = 896;
  IndexOptions o;
  o.exact_below = 0;
  VectorIndex index(dim, o);
  std::vector<std::vector<float>> vecs;
  std::vector<uint64_t> labels;
  for (uint64_t i = 0; i < 2000; ++i) {
    vecs.push_back(RandomUnit(rng, dim));
    labels.push_back(i);
    index.Add(i, vecs.back().data());
  }
  ASSERT_TRUE(index.has_graph());
  int64_t found = 0, total = 0;
  for (int t = 0; t < 100; ++t) {
    const auto q = RandomUnit(rng, dim);
    std::set<uint64_t> truth;
    for (const auto& [l, s] : BruteForce(vecs, labels, q, 10)) truth.insert(l);
    const auto got = index.Search(q.data(), 10);
    ASSERT_EQ(got.size(), 10u);
    for (size_t i = 1; i < got.size(); ++i) EXPECT_GE(got[i - 1].score, got[i].score);
    for (const auto& h : got) found += truth.count(h.label) ? 1 : 0;
    total += 10;
  }
  const double recall = static_cast<double>(found) / static_cast<double>(total);
  EXPECT_GE(recall, 0.98) << "recall@10 " << recall;
}

TEST(VectorIndexTest, RemovedVectorsNeverComeBack) {
  for (const int64_t exact_below : {int64_t{4096}, int64_t{0}}) {
    std::mt19937 rng(3);
    const int64_t dim = 16;
    IndexOptions o;
    o.exact_below = exact_below;
    VectorIndex index(dim, o);
    std::vector<std::vector<float>> vecs;
    for (uint64_t i = 0; i < 300; ++i) {
      vecs.push_back(RandomUnit(rng, dim));
      index.Add(i, vecs.back().data());
    }
    EXPECT_EQ(index.has_graph(), exact_below == 0);
    // Searching with a stored vector finds it first; once removed, never.
    for (uint64_t i = 0; i < 300; i += 2) ASSERT_TRUE(index.Remove(i));
    EXPECT_FALSE(index.Remove(0));
    EXPECT_EQ(index.size(), 150);
    for (uint64_t i = 0; i < 300; ++i) {
      const auto got = index.Search(vecs[i].data(), 300);
      EXPECT_EQ(got.size(), 150u);
      for (const auto& h : got) ASSERT_EQ(h.label % 2, 1u) << "removed label " << h.label;
      if (i % 2 == 1) {
        EXPECT_EQ(got.at(0).label, i);
      }
    }
    // A label added again with another vector answers with the new one.
    index.Add(1, vecs[0].data());
    EXPECT_EQ(index.Search(vecs[0].data(), 1).at(0).label, 1u);
  }
}

CollectionDocument Doc(const std::string& id, std::vector<float> v, nlohmann::json meta = nullptr) {
  CollectionDocument d;
  d.id = d.parent = id;
  d.text = "text of " + id;
  d.metadata = std::move(meta);
  d.vector = std::move(v);
  return d;
}

TEST(CollectionTest, FilterReplaceAndRemove) {
  std::mt19937 rng(4);
  const int64_t dim = 8;
  Collection c({"c", "", "", KvSource::kEmbed}, dim, IndexOptions{});
  std::vector<CollectionDocument> docs;
  for (int i = 0; i < 10; ++i) {
    docs.push_back(Doc("d" + std::to_string(i), RandomUnit(rng, dim),
                       {{"lang", i % 2 ? "en" : "fr"}, {"n", i}}));
  }
  EXPECT_TRUE(c.Upsert(docs, 100).empty());
  EXPECT_THROW(c.Upsert({Doc("x", RandomUnit(rng, dim))}, 10), Error);  // would hold 11
  EXPECT_EQ(c.size(), 10);
  const auto q = RandomUnit(rng, dim);
  SearchParams p;
  p.top_k = 10;
  p.filter = {{"lang", "en"}};
  const auto en = c.Search(q, p);
  ASSERT_EQ(en.size(), 5u);
  for (const auto& h : en) EXPECT_EQ(h.metadata["lang"], "en") << h.id;
  p.filter = {{"lang", "en"}, {"n", 3}};
  ASSERT_EQ(c.Search(q, p).size(), 1u);
  EXPECT_EQ(c.Search(q, p)[0].id, "d3");
  p.filter = nullptr;
  p.min_score = 2.0;  // no cosine reaches it
  EXPECT_TRUE(c.Search(q, p).empty());
  // Replacing d3 with q itself makes it the best hit; removing it drops it.
  p.min_score.reset();
  const auto replaced = c.Upsert({Doc("d3", q)}, 100);
  ASSERT_EQ(replaced.size(), 1u);
  EXPECT_EQ(c.Search(q, p).at(0).id, "d3");
  EXPECT_NEAR(c.Search(q, p).at(0).score, 1.0, 1e-5);
  EXPECT_EQ(c.Remove("d3").size(), 1u);
  for (const auto& h : c.Search(q, p)) EXPECT_NE(h.id, "d3");
  EXPECT_TRUE(c.Remove("d3").empty());
  EXPECT_EQ(c.size(), 9);
}

std::vector<std::string> Ids(const std::vector<SearchHit>& hits) {
  std::vector<std::string> out;
  for (const auto& h : hits) out.push_back(h.id + ":" + std::to_string(h.score));
  return out;
}

std::string IndexFile(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".hnsw") return e.path().string();
  }
  return "";
}

// The add that takes a collection past the threshold builds the graph without
// shutting searches out: they go on over the scan while it builds (the build
// holds only a shared lock), and none waits for the whole build. Afterwards the
// graph answers, and deleting most documents compacts it the same way.
TEST(CollectionTest, SearchesGoOnWhileTheGraphIsBuilt) {
  std::mt19937 rng(9);
  const int64_t dim = 128, n = 4000;
  IndexOptions o;
  o.exact_below = n;
  Collection c({"g", "", "", KvSource::kEmbed}, dim, o);
  std::vector<CollectionDocument> docs;
  for (int64_t i = 0; i + 1 < n; ++i)
    docs.push_back(Doc("d" + std::to_string(i), RandomUnit(rng, dim)));
  c.Upsert(docs, n);
  ASSERT_FALSE(c.uses_graph());
  const auto q = RandomUnit(rng, dim);
  SearchParams p;
  p.top_k = 5;

  using Clock = std::chrono::steady_clock;
  std::atomic<bool> done{false};
  std::vector<double> waits;  // seconds per search during the build
  std::thread searcher([&] {
    while (!done) {
      const auto t0 = Clock::now();
      EXPECT_EQ(c.Search(q, p).size(), 5u);
      waits.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
  });
  const auto t0 = Clock::now();
  c.Upsert({Doc("last", RandomUnit(rng, dim))}, n);  // crosses: builds the graph
  const double build = std::chrono::duration<double>(Clock::now() - t0).count();
  done = true;
  searcher.join();
  EXPECT_TRUE(c.uses_graph());
  ASSERT_GE(waits.size(), 3u) << "searches answered during a " << build << " s build";
  EXPECT_LT(*std::max_element(waits.begin(), waits.end()), build / 2)
      << "a search waited for the build (" << build << " s)";
  EXPECT_EQ(c.Search(q, p, /*exact=*/true).size(), 5u);

  // Below the threshold again: back to the scan at once.
  for (int64_t i = 0; i < 2000; ++i) c.Remove("d" + std::to_string(i));
  EXPECT_FALSE(c.uses_graph());
}

TEST(CollectionTest, SavedCollectionLoadsAndDamagedGraphIsRebuilt) {
  std::mt19937 rng(5);
  const int64_t dim = 32;
  IndexOptions o;
  o.exact_below = 100;
  const std::string dir = testing::MakeTempDir("coll-save") + "/c";
  Collection c({"c", "doc: ", "query: ", KvSource::kCausal}, dim, o);
  std::vector<CollectionDocument> docs;
  for (int i = 0; i < 300; ++i) {
    docs.push_back(Doc("d" + std::to_string(i), RandomUnit(rng, dim), {{"i", i}}));
  }
  c.Upsert(docs, 1000);
  c.Remove("d7");
  ASSERT_TRUE(c.uses_graph());
  c.Save(dir);
  SearchParams p;
  p.top_k = 20;
  const auto q = RandomUnit(rng, dim);
  const auto want = Ids(c.Search(q, p));

  bool rebuilt = true;
  auto loaded = Collection::Load(dir, dim, o, &rebuilt);
  EXPECT_FALSE(rebuilt);
  EXPECT_EQ(loaded->size(), 299);
  EXPECT_EQ(loaded->settings().query_instruction, "query: ");
  EXPECT_EQ(loaded->settings().kv_source, KvSource::kCausal);
  EXPECT_EQ(Ids(loaded->Search(q, p)), want);
  EXPECT_EQ(loaded->Document("d5")->metadata["i"], 5);

  // A truncated graph file is noticed and rebuilt from the documents.
  const std::string graph = IndexFile(dir);
  ASSERT_FALSE(graph.empty());
  fs::resize_file(graph, fs::file_size(graph) / 2);
  loaded = Collection::Load(dir, dim, o, &rebuilt);
  EXPECT_TRUE(rebuilt);
  EXPECT_TRUE(loaded->uses_graph());
  EXPECT_EQ(loaded->size(), 299);
  const auto exact = Ids(loaded->Search(q, p, /*exact=*/true));
  EXPECT_EQ(Ids(loaded->Search(q, p)), exact);

  // A damaged documents file is refused whole, never half-used.
  const std::string json_path = dir + "/documents.json";
  fs::resize_file(json_path, fs::file_size(json_path) - 10);
  EXPECT_THROW(Collection::Load(dir, dim, o, &rebuilt), Error);
}

TEST(CollectionTest, StoreSetsDamagedCollectionsAsideAndKeepsOthers) {
  std::mt19937 rng(6);
  CollectionOptions o;
  o.data_dir = testing::MakeTempDir("coll-store");
  const int64_t dim = 8;
  {
    CollectionStore store(o, dim);
    for (const char* name : {"good", "bad"}) {
      auto c = store.Create({name, "", "", KvSource::kEmbed});
      c->Upsert({Doc("a", RandomUnit(rng, dim)), Doc("b", RandomUnit(rng, dim))}, 10);
      store.Persist(*c);
    }
    EXPECT_THROW(store.Create({"good", "", "", KvSource::kEmbed}), Error);
    EXPECT_THROW(store.Create({"no/slash", "", "", KvSource::kEmbed}), Error);
  }
  std::ofstream(o.data_dir + "/collections/bad/documents.json") << "{\"format\": 1, \"dim\"";
  CollectionStore store(o, dim);
  EXPECT_EQ(store.Get("good")->size(), 2);
  EXPECT_THROW(store.Get("bad"), Error);
  int aside = 0;
  for (const auto& e : fs::directory_iterator(o.data_dir + "/collections")) {
    aside += e.path().filename().string().rfind("bad.damaged-", 0) == 0 ? 1 : 0;
  }
  EXPECT_EQ(aside, 1);
  // Another model width: refused (set aside) rather than searched with wrong vectors.
  CollectionStore other(o, dim * 2);
  EXPECT_TRUE(other.List().empty());
}

}  // namespace
}  // namespace gritserve
