// The document store's disk tier over HTTP, against the real binary:
// --cache-disk-bytes keeps the directory under its budget (LRU over entry and
// id files, an evicted entry's ids going with it, an existing directory
// trimmed at start-up), /cache and /metrics report it, and a directory that
// cannot be written leaves every request served from memory, said once in
// the log and counted in /metrics.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "http_api_util.h"

namespace gritserve::testing {
namespace {

namespace fs = std::filesystem;

// Documents of one shape, so their entries have nearly the same size.
std::string Doc(size_t i) {
  const char* topics[] = {"apples", "rivers", "engines", "violins", "glaciers", "comets"};
  return std::string("This short note is about ") + topics[i] + " and nothing else.";
}

json Stats(httplib::Client& c) { return BodyJson(c.Get("/cache")); }

size_t KvFiles(const std::string& dir) {
  size_t n = 0;
  for (const auto& f : fs::directory_iterator(dir)) n += f.path().extension() == ".kv" ? 1 : 0;
  return n;
}

void StoreDoc(httplib::Client& c, size_t i) {
  Ok(c, "/embed", {{"inputs", {Doc(i)}}, {"ids", {"d" + std::to_string(i)}}});
}

// Generation over one cached id; its status (404 once the id is gone).
int GenerateOver(httplib::Client& c, const std::string& id) {
  auto res = PostJson(c, "/generate",
                      {{"prompt", "Which note is this?"},
                       {"documents", {id}},
                       {"kv_source", "embed"},  // the stored entry itself
                       {"max_tokens", 2}});
  return res ? res->status : -1;
}

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(HttpCacheDiskTest, DiskBudgetEvictsLeastRecentlyUsedAndTrimsAtStart) {
  int64_t one = 0;  // an entry file and its id file
  {
    ServerProcess probe(TinyCheckpointDir(), {"--cache-dir", MakeTempDir("disk-probe")});
    auto c = probe.Client();
    StoreDoc(*c, 0);
    one = Stats(*c)["disk_bytes"].get<int64_t>();
    ASSERT_GT(one, 0);
  }
  const std::string dir = MakeTempDir("disk-budget");
  const int64_t budget = one * 5 / 2;  // two documents, not three
  {
    ServerProcess server(TinyCheckpointDir(),
                         {"--cache-dir", dir, "--cache-disk-bytes", std::to_string(budget)});
    auto c = server.Client();
    StoreDoc(*c, 0);
    StoreDoc(*c, 1);
    EXPECT_EQ(GenerateOver(*c, "d0"), 200);  // d0 used: d1 is now the least recently used
    StoreDoc(*c, 2);
    EXPECT_EQ(GenerateOver(*c, "d1"), 404) << "d1's files were the least recently used";
    EXPECT_EQ(GenerateOver(*c, "d0"), 200);
    StoreDoc(*c, 3);
    EXPECT_EQ(GenerateOver(*c, "d2"), 404);
    const json s = Stats(*c);
    EXPECT_LE(s["disk_bytes"].get<int64_t>(), budget) << s;
    EXPECT_EQ(s["disk_budget_bytes"].get<int64_t>(), budget) << s;
    EXPECT_EQ(s["disk_evictions"].get<int64_t>(), 2) << s;
    EXPECT_EQ(s["id_evictions"].get<int64_t>(), 2) << s;
    EXPECT_EQ(s["ids"].get<int64_t>(), 2) << s;
    EXPECT_EQ(s["computed"].get<int64_t>(), 0) << s;
    EXPECT_EQ(KvFiles(dir), 2u);
    const std::string metrics = MetricsText(*c);
    EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_disk_bytes"), s["disk_bytes"].get<double>());
    EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_disk_budget_bytes"), budget);
    EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_disk_evictions_total"), 2);
    EXPECT_EQ(Metric(metrics, "gritserve_doc_cache_id_evictions_total"), 2);
    EXPECT_EQ(server.Signal(SIGTERM), 0);
  }
  // A smaller budget trims what the last run left (least recently used
  // first by modification time, which cache_doc_kv_store_test checks: d0's
  // last use and d3's writing may fall in one tick of the file system clock).
  ServerProcess smaller(TinyCheckpointDir(),
                        {"--cache-dir", dir, "--cache-disk-bytes", std::to_string(one * 3 / 2)});
  auto c = smaller.Client();
  const json s = Stats(*c);
  EXPECT_EQ(KvFiles(dir), 1u);
  EXPECT_EQ(s["ids"].get<int64_t>(), 1) << s;
  EXPECT_LE(s["disk_bytes"].get<int64_t>(), one * 3 / 2) << s;
  EXPECT_EQ(GenerateOver(*c, "d0") + GenerateOver(*c, "d3"), 200 + 404)
      << "one document stays, with its id";
  EXPECT_EQ(Stats(*c)["computed"].get<int64_t>(), 0) << "it was read from disk";
}

// The directory is replaced by a file while the server runs (root can write
// into a read-only directory, but not into a file): requests keep working
// from memory, failures are counted, and the log says so once.
TEST(HttpCacheDiskTest, UnwritableDirectoryKeepsServingFromMemory) {
  const std::string dir = MakeTempDir("disk-unwritable");
  ServerProcess server(TinyCheckpointDir(), {"--cache-dir", dir});
  auto c = server.Client();
  fs::rename(dir, dir + ".moved");
  std::ofstream(dir) << "not a directory";
  for (size_t i = 0; i < 3; ++i) StoreDoc(*c, i);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(GenerateOver(*c, "d" + std::to_string(i)), 200);
  const json s = Stats(*c);
  EXPECT_EQ(s.value("disk_write_errors", -1), 6) << "three entries, three ids: " << s;
  EXPECT_EQ(s.value("computed", -1), 0) << "served from memory: " << s;
  EXPECT_EQ(Metric(*c, "gritserve_doc_cache_disk_write_errors_total"), 6);
  EXPECT_EQ(Occurrences(server.Log(), "cannot write"), 1u) << server.Log();
}

TEST(HttpCacheDiskTest, DirectoryThatCannotBeCreatedStillServes) {
  const std::string file = MakeTempDir("disk-blocked") + "/file";
  std::ofstream(file) << "x";
  ServerProcess server(TinyCheckpointDir(), {"--cache-dir", file + "/kv"});
  auto c = server.Client();
  StoreDoc(*c, 0);
  EXPECT_EQ(GenerateOver(*c, "d0"), 200);
  EXPECT_EQ(Stats(*c).value("disk_write_errors", -1), 2);
  EXPECT_EQ(Occurrences(server.Log(), "cannot create"), 1u) << server.Log();
}

}  // namespace
}  // namespace gritserve::testing
