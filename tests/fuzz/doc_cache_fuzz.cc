// The document cache's files on disk (src/cache/doc_kv_store.cc): an entry
// file (magic, header length, JSON header, payload, checksum) read by Get, or
// an alias file read when a store opens its directory. The first input byte
// picks which; an entry's checksum is recomputed so that the header and
// payload behind it are what gets exercised. A damaged file must be dropped
// (a miss); what is accepted must be consistent.
#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "gritserve/cache/doc_kv_store.h"

namespace {

using gritserve::fuzz::Check;

void Write(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

gritserve::DocKvStore::Options StoreOptions(const std::string& dir) {
  gritserve::DocKvStore::Options o;
  o.dir = dir;
  o.fingerprint = "fuzz";
  o.budget_bytes = 1 << 20;
  return o;
}

void Entry(const std::string& dir, std::string file) {
  if (file.size() >= 24) {
    const uint64_t sum = XXH3_64bits(file.data() + 16, file.size() - 24);
    std::memcpy(&file[file.size() - 8], &sum, 8);
  }
  const gritserve::DocKey key{1, 2};
  Write(std::filesystem::path(dir) / (key.Hex() + ".kv"), file);
  gritserve::DocKvStore store(StoreOptions(dir));
  auto e = store.Get(key);
  if (e == nullptr) return;
  Check(e->text_begin <= e->text_end && e->text_end <= e->ids.size(), "text span inside the ids");
  Check(e->keys.size() == e->values.size(), "as many values as keys");
  for (size_t l = 0; l < e->keys.size(); ++l) {
    Check(e->keys[l].dim() == 3 && e->keys[l].size(1) == e->tokens(), "keys [Hkv, T, D]");
    Check(e->values[l].sizes() == e->keys[l].sizes(), "values shaped as keys");
  }
}

void Alias(const std::string& dir, const std::string& file) {
  const auto aliases = std::filesystem::path(dir) / "aliases";
  std::filesystem::create_directories(aliases);
  Write(aliases / "00000000000000000000000000000000.json", file);
  gritserve::DocKvStore store(StoreOptions(dir));
  const auto j = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("alias") || !j["alias"].is_string()) return;
  const auto a = store.Lookup(j["alias"].get<std::string>());
  if (!a) return;
  Check(a->text_begin <= a->text_end && a->text_end <= a->ids.size(), "text span inside the ids");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = gritserve::fuzz::ScratchDir("doc-cache");
  if (size == 0) return 0;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string file(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    Alias(dir, file);
  } else {
    Entry(dir, file);
  }
  return 0;
}
