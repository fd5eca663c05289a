// The document store's disk tier and ids: LRU eviction under the disk budget
// (entries and id files together, an entry's ids leaving with it), the
// start-up scan that trims an existing directory, the id budget, and a
// directory that cannot be written (served from memory, said once).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gritserve/cache/doc_kv_store.h"
#include "test_util.h"

namespace gritserve {
namespace {

namespace fs = std::filesystem;

DocKvStore::Options Opts(const std::string& dir, int64_t disk_budget) {
  DocKvStore::Options o;
  o.dir = dir;
  o.disk_budget_bytes = disk_budget;
  o.fingerprint = "test-model";
  return o;
}

// Entries of one shape (16 ids of four digits each), so their files have one size.
DocKvEntry MakeEntry(const DocKvStore& store, int seed) {
  DocKvEntry e;
  for (int t = 0; t < 16; ++t) e.ids.push_back(1000 + seed * 100 + t);
  e.key = store.MakeKey("test", KvSource::kCausal, e.ids);
  e.text_end = e.ids.size();
  for (int l = 0; l < 2; ++l) {
    e.keys.push_back(at::full({1, 16, 4}, static_cast<float>(seed)));  // [Hkv, T, D]
    e.values.push_back(at::full({1, 16, 4}, static_cast<float>(-seed)));
  }
  return e;
}

DocAlias AliasOf(const DocKvEntry& e) { return {e.key, e.source, e.ids, e.text_begin, e.text_end}; }

std::string EntryFile(const std::string& dir, const DocKey& key) {
  return (fs::path(dir) / (key.Hex() + ".kv")).string();
}

size_t CountFiles(const fs::path& dir, const std::string& ext) {
  size_t n = 0;
  for (const auto& f : fs::directory_iterator(dir)) n += f.path().extension() == ext ? 1 : 0;
  return n;
}

// Bytes of one entry file and of one id file ("a0".."a9") of the shape above.
struct FileSizes {
  int64_t entry = 0, alias = 0;
};
FileSizes MeasureFiles() {
  DocKvStore probe(Opts(testing::MakeTempDir("kv-probe"), 1LL << 30));
  const DocKvEntry e = MakeEntry(probe, 0);
  probe.Put(e);
  FileSizes s;
  s.entry = probe.stats().disk_bytes;
  probe.SetAlias("a0", AliasOf(e));
  s.alias = probe.stats().disk_bytes - s.entry;
  EXPECT_GT(s.entry, 0);
  EXPECT_GT(s.alias, 0);
  return s;
}

// Log lines of the default logger while it lives.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~LogCapture() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  size_t Count(const std::string& what) const {
    const std::string text = out_.str();
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

TEST(DocKvStoreDiskTest, EvictsLeastRecentlyUsedFilesAndTheirIds) {
  const FileSizes size = MeasureFiles();
  const std::string dir = testing::MakeTempDir("kv-lru");
  // Two entries with one id each fit, three do not.
  const int64_t budget = 2 * (size.entry + size.alias) + size.entry / 2;
  DocKvStore store(Opts(dir, budget));
  std::vector<DocKvEntry> e;
  for (int i = 0; i < 4; ++i) e.push_back(MakeEntry(store, i));
  for (int i = 0; i < 3; ++i) {
    store.SetAlias("a" + std::to_string(i), AliasOf(e[i]));
    store.Put(e[i]);
    EXPECT_LE(store.stats().disk_bytes, budget) << "after " << i;
  }
  DocKvStats s = store.stats();
  EXPECT_EQ(s.disk_evictions, 1);
  EXPECT_FALSE(fs::exists(EntryFile(dir, e[0].key)));
  EXPECT_FALSE(store.Lookup("a0")) << "an id goes with its entry's file";
  EXPECT_EQ(s.alias_evictions, 1);
  EXPECT_EQ(CountFiles(fs::path(dir) / "aliases", ".json"), 2u);
  EXPECT_EQ(s.disk_files, 4);
  EXPECT_EQ(s.disk_budget, budget);
  // The memory tier still holds e0: evicting a file is not forgetting the entry.
  EXPECT_TRUE(store.Get(e[0].key));

  // Using e1 by its id makes e2 and its id the least recently used files.
  ASSERT_TRUE(store.Lookup("a1"));
  ASSERT_TRUE(store.Get(e[1].key));
  store.Put(e[3]);
  EXPECT_TRUE(fs::exists(EntryFile(dir, e[1].key)));
  EXPECT_FALSE(fs::exists(EntryFile(dir, e[2].key)));
  EXPECT_TRUE(store.Lookup("a1"));
  EXPECT_FALSE(store.Lookup("a2"));
  s = store.stats();
  EXPECT_EQ(s.disk_evictions, 2);
  EXPECT_LE(s.disk_bytes, budget);
  // An entry file larger than the whole budget is not written at all.
  DocKvStore tiny(Opts(testing::MakeTempDir("kv-tiny"), size.entry - 1));
  tiny.Put(MakeEntry(tiny, 5));
  EXPECT_EQ(tiny.stats().disk_writes, 0);
  EXPECT_EQ(tiny.stats().disk_bytes, 0);
}

TEST(DocKvStoreDiskTest, StartUpScanTrimsOldestFirst) {
  const FileSizes size = MeasureFiles();
  const std::string dir = testing::MakeTempDir("kv-scan");
  std::vector<DocKvEntry> e;
  {
    DocKvStore first(Opts(dir, 1LL << 30));
    for (int i = 0; i < 4; ++i) {
      e.push_back(MakeEntry(first, i));
      first.Put(e.back());
      first.SetAlias("a" + std::to_string(i), AliasOf(e.back()));
    }
    EXPECT_EQ(first.stats().disk_files, 8);
  }
  // Use order by modification time: e0, a0, e1, a1, ... (e0 the oldest).
  const auto now = fs::file_time_type::clock::now();
  for (int i = 0; i < 4; ++i) {
    fs::last_write_time(EntryFile(dir, e[i].key), now - std::chrono::minutes(60 - 10 * i));
  }
  size_t alias_files = 0;
  for (const auto& f : fs::directory_iterator(fs::path(dir) / "aliases")) {
    const std::string name = nlohmann::json::parse(testing::ReadFile(f.path().string()))["alias"];
    const int i = name.back() - '0';
    fs::last_write_time(f.path(), now - std::chrono::minutes(59 - 10 * i));
    ++alias_files;
  }
  ASSERT_EQ(alias_files, 4u);
  // A writer that died long ago left a temporary file; one being written now must stay.
  const fs::path stale = fs::path(dir) / "0123.kv.tmp-1-0",
                 fresh = fs::path(dir) / "4567.kv.tmp-2-0";
  std::ofstream(stale) << "partial";
  std::ofstream(fresh) << "partial";
  fs::last_write_time(stale, now - std::chrono::hours(3));

  const int64_t budget = 2 * (size.entry + size.alias) + size.entry / 2;
  DocKvStore second(Opts(dir, budget));
  DocKvStats s = second.stats();
  EXPECT_LE(s.disk_bytes, budget) << s.disk_bytes;
  EXPECT_EQ(s.disk_files, 4);
  EXPECT_EQ(s.disk_evictions, 2);
  EXPECT_FALSE(fs::exists(EntryFile(dir, e[0].key)));
  EXPECT_FALSE(fs::exists(EntryFile(dir, e[1].key)));
  EXPECT_FALSE(second.Lookup("a0"));
  EXPECT_FALSE(second.Lookup("a1"));
  ASSERT_TRUE(second.Lookup("a3"));
  EXPECT_EQ(second.Lookup("a3")->ids, e[3].ids);
  EXPECT_EQ(CountFiles(fs::path(dir) / "aliases", ".json"), 2u);
  // What stayed reads back.
  auto back = second.Get(e[2].key);
  ASSERT_TRUE(back);
  EXPECT_TRUE(at::equal(back->keys[1], e[2].keys[1]));
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh));
}

TEST(DocKvStoreDiskTest, IdsAreBoundedInMemory) {
  DocKvStore::Options o;
  o.fingerprint = "test-model";
  DocKvStore probe(o);
  const DocKvEntry e = MakeEntry(probe, 1);
  probe.SetAlias("a0", AliasOf(e));
  const int64_t one = probe.stats().alias_bytes;
  ASSERT_GT(one, static_cast<int64_t>(e.ids.size() * sizeof(int32_t)));
  {
    o.alias_budget_bytes = one - 1;
    DocKvStore none(o);
    none.SetAlias("a0", AliasOf(e));
    EXPECT_FALSE(none.Lookup("a0")) << "an id larger than the budget is not kept";
  }
  // Room for three ids of this size (two-byte names, 16 token ids), not four.
  o.alias_budget_bytes = one * 3 + one / 2;
  DocKvStore store(o);
  for (int i = 0; i < 5; ++i) store.SetAlias("a" + std::to_string(i), AliasOf(e));
  DocKvStats s = store.stats();
  EXPECT_EQ(s.aliases, 3);
  EXPECT_EQ(s.alias_bytes, 3 * one);
  EXPECT_EQ(s.alias_evictions, 2);
  EXPECT_FALSE(store.Lookup("a0"));
  EXPECT_FALSE(store.Lookup("a1"));
  ASSERT_TRUE(store.Lookup("a2"));  // now the most recently used
  store.SetAlias("a5", AliasOf(e));
  EXPECT_TRUE(store.Lookup("a2"));
  EXPECT_FALSE(store.Lookup("a3"));
  EXPECT_TRUE(store.Lookup("a4"));
}

// The directory goes away under a running store (replaced by a file, so even
// root cannot write there): entries and ids are still served from memory, the
// failures are counted, and the log says it once, and again only after a
// write has worked in between.
TEST(DocKvStoreDiskTest, UnwritableDirectoryServesFromMemoryAndSaysSoOnce) {
  const std::string dir = testing::MakeTempDir("kv-unwritable");
  LogCapture log;
  DocKvStore store(Opts(dir, 1LL << 30));
  std::vector<DocKvEntry> e;
  for (int i = 0; i < 5; ++i) e.push_back(MakeEntry(store, i));
  const std::string moved = dir + ".moved";
  fs::rename(dir, moved);
  std::ofstream(dir) << "not a directory";
  for (int i = 0; i < 3; ++i) {
    store.Put(e[i]);
    store.SetAlias("a" + std::to_string(i), AliasOf(e[i]));
  }
  for (int i = 0; i < 3; ++i) {
    auto got = store.Get(e[i].key);
    ASSERT_TRUE(got) << i;
    EXPECT_TRUE(at::equal(got->values[0], e[i].values[0]));
    EXPECT_TRUE(store.Lookup("a" + std::to_string(i)));
  }
  DocKvStats s = store.stats();
  EXPECT_EQ(s.disk_write_errors, 6);
  EXPECT_EQ(s.disk_writes, 0);
  EXPECT_EQ(s.disk_bytes, 0);
  EXPECT_EQ(log.Count("cannot write"), 1u);

  fs::remove(dir);
  fs::rename(moved, dir);
  store.Put(e[3]);
  EXPECT_EQ(store.stats().disk_writes, 1);
  EXPECT_EQ(log.Count("writing to " + dir + " again"), 1u);

  // A write that fails after its temporary file exists (the rename, here onto
  // a non-empty directory) leaves no temporary file behind.
  fs::create_directories(fs::path(EntryFile(dir, e[4].key)) / "occupied");
  store.Put(e[4]);
  EXPECT_EQ(store.stats().disk_write_errors, 7);
  EXPECT_EQ(log.Count("cannot write"), 2u);
  for (const auto& f : fs::directory_iterator(dir)) {
    EXPECT_EQ(f.path().filename().string().find(".tmp-"), std::string::npos) << f.path();
  }
  EXPECT_TRUE(store.Get(e[4].key));
}

TEST(DocKvStoreDiskTest, DirectoryThatCannotBeCreatedLeavesTheMemoryTier) {
  const std::string parent = testing::MakeTempDir("kv-blocked");
  const std::string file = parent + "/file";
  std::ofstream(file) << "x";
  LogCapture log;
  DocKvStore store(Opts(file + "/kv", 1LL << 30));
  const DocKvEntry e = MakeEntry(store, 1);
  store.Put(e);
  store.SetAlias("a", AliasOf(e));
  EXPECT_TRUE(store.Get(e.key));
  EXPECT_TRUE(store.Lookup("a"));
  EXPECT_EQ(store.stats().disk_write_errors, 2);
  EXPECT_EQ(log.Count("cannot create"), 1u);
  EXPECT_EQ(log.Count("cannot write"), 0u) << "said once, at start-up";
}

}  // namespace
}  // namespace gritserve
