// The document store's use of its Redis tier (redis_tier.h): what goes in,
// under which keys, and checking what comes back before it is used.
#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <algorithm>

#include "gritserve/cache/doc_kv_store.h"
#include "gritserve/cache/entry_codec.h"

namespace gritserve {

std::string DocKvStore::RedisEntryKey(const DocKey& key) const {
  return redis_->prefix() + "kv:" + key.Hex();
}

std::string DocKvStore::RedisAliasKey(const std::string& alias) const {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  for (const std::string* s : {&options_.fingerprint, &alias}) {
    const uint64_t n = s->size();
    XXH3_128bits_update(st, &n, sizeof(n));  // length-prefixed: no ambiguous concatenation
    XXH3_128bits_update(st, s->data(), s->size());
  }
  const XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  return redis_->prefix() + "id:" + DocKey{h.high64, h.low64}.Hex();
}

// Encoded on the writer's thread: the copy and checksum of megabytes stay off
// the inference thread. The entry is immutable once stored, so sharing it is safe.
void DocKvStore::QueueRedisEntry(const std::shared_ptr<const DocKvEntry>& entry) {
  std::string fingerprint = options_.fingerprint;
  redis_->PutEntry(RedisEntryKey(entry->key), entry->ByteSize(),
                   [entry, fingerprint] { return EncodeEntry(*entry, fingerprint); });
}

void DocKvStore::Prefetch(const std::vector<DocKey>& keys) {
  if (!redis_ || !redis_->up()) return;
  std::vector<DocKey> wanted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const DocKey& k : keys) {
      // Memory holds it, or the local disk does (read when used, as before).
      if (index_.count(k) != 0 || disk_entries_.count(k) != 0) continue;
      if (std::find(wanted.begin(), wanted.end(), k) == wanted.end()) wanted.push_back(k);
    }
  }
  if (wanted.empty()) return;
  std::vector<std::string> redis_keys;
  for (const DocKey& k : wanted) redis_keys.push_back(RedisEntryKey(k));
  const std::vector<std::optional<std::string>> values = redis_->GetEntries(redis_keys);
  std::vector<std::string> bad;
  for (size_t i = 0; i < wanted.size(); ++i) {
    if (!values[i]) continue;
    std::shared_ptr<DocKvEntry> e;
    try {
      e = DecodeEntry(*values[i], wanted[i], options_.fingerprint, "redis " + redis_keys[i]);
    } catch (const std::exception& ex) {
      // Never used: deleted, so that whoever computes it next stores it again.
      spdlog::warn("document cache: dropping Redis value {}: {}", redis_keys[i], ex.what());
      redis_->CountCorrupt();
      bad.push_back(redis_keys[i]);
      continue;
    }
    // Another server may store another dtype; memory holds this one's.
    for (auto* ts : {&e->keys, &e->values}) {
      for (at::Tensor& t : *ts) {
        if (t.scalar_type() != options_.storage_dtype) t = t.to(options_.storage_dtype);
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (index_.count(e->key) == 0) InsertLocked(e);
  }
  redis_->Delete(bad);
}

std::optional<DocAlias> DocKvStore::LookupRedis(const std::string& alias) {
  const std::string key = RedisAliasKey(alias);
  const std::optional<std::string> bytes = redis_->GetString(key);
  if (!bytes) return std::nullopt;
  DocAlias info;
  try {
    std::string name;
    info = DecodeAlias(*bytes, "redis " + key, options_.fingerprint, &name);
    if (name != alias) throw std::runtime_error("holds another id");
  } catch (const std::exception& e) {
    spdlog::warn("document cache: dropping Redis value {}: {}", key, e.what());
    redis_->CountCorrupt();
    redis_->Delete({key});
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(mu_);
  PutAliasLocked(alias, info);
  return info;
}

bool DocKvStore::RemoveFromRedis(const std::string& alias_or_key) {
  std::vector<std::string> keys;
  if (std::optional<DocAlias> a = Lookup(alias_or_key)) {
    keys = {RedisAliasKey(alias_or_key), RedisEntryKey(a->key)};
  } else if (std::optional<DocKey> k = DocKey::FromHex(alias_or_key)) {
    keys = {RedisEntryKey(*k)};
  }
  return redis_->Delete(keys) > 0;
}

void DocKvStore::FlushRedis() {
  if (redis_) redis_->Flush();
}

}  // namespace gritserve
