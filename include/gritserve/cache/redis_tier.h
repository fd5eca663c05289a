// The document store's Redis tier: entries and client ids shared by every
// server that names the same Redis, so a document embedded on one replica is
// reused by the others. Torch-free: it moves bytes (entry_codec.h makes them).
//
// Threads. Reads (Get*) run on the calling HTTP thread, several keys in one
// pipelined round trip; writes are queued for one background writer, so the
// inference thread never waits on the network. The queue is bounded: past it
// writes are dropped and counted. Redis unreachable or slow: every command
// is bounded by the timeout, the tier is marked down (logged once per
// outage, counted), reads and writes skip it meanwhile, and the writer
// reconnects in the background with a growing backoff.
//
// Layout: an entry is a hash {n: chunk count, "0".."n-1": chunks of at most
// chunk_bytes}, written in one MULTI/EXEC, so a reader sees all or none of it
// and Redis's LRU evicts it whole; an id is a string.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "gritserve/cache/doc_types.h"

struct redisContext;

namespace gritserve {

// redis://[[user]:password@]host[:port][/db]; std::invalid_argument otherwise.
struct RedisUrl {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string user, password;
  std::string Display() const;  // without the password, for logs and /cache
};
RedisUrl ParseRedisUrl(const std::string& url);

// `bytes` cut into pieces of at most `chunk_bytes` (one empty piece for no bytes).
std::vector<std::string_view> SplitChunks(std::string_view bytes, size_t chunk_bytes);

class RedisTier {
 public:
  struct Options {
    std::string url;
    std::string prefix = "gritserve:";  // every key starts with it
    int timeout_ms = 500;               // connect, and each send or receive
    size_t chunk_bytes = size_t{1} << 20;
    int64_t queue_bytes = int64_t{256} << 20;  // writes waiting for the writer
  };
  // Tries Redis once (bounded by the timeout), then starts the writer; an
  // unreachable Redis is logged and retried in the background.
  explicit RedisTier(Options options);
  ~RedisTier();
  RedisTier(const RedisTier&) = delete;
  RedisTier& operator=(const RedisTier&) = delete;

  // The entries (whole values, chunks joined) stored under `keys`, in one
  // round trip; nullopt where absent, incomplete, or Redis is down.
  std::vector<std::optional<std::string>> GetEntries(const std::vector<std::string>& keys);
  // A string value, or nullopt (absent, or Redis down).
  std::optional<std::string> GetString(const std::string& key);
  // Deletes now (not queued): a removed document must not come back from
  // Redis. The number of keys that were there.
  int64_t Delete(const std::vector<std::string>& keys);
  // A value the caller found damaged or foreign (it deletes it).
  void CountCorrupt();

  // Queued for the writer. `bytes` makes the value on the writer's thread;
  // `size` is what it will take (for the queue bound).
  void PutEntry(std::string key, int64_t size, std::function<std::string()> bytes);
  void PutString(std::string key, std::string value);

  bool up() const { return up_.load(); }
  RedisTierStats stats() const;
  const std::string& prefix() const { return options_.prefix; }
  const RedisUrl& url() const { return url_; }
  // Blocks until the writer has nothing queued or in hand (tests, shutdown).
  void Flush();

  // A connection, freed by redisFree.
  struct ContextFree {
    void operator()(redisContext* c) const;
  };
  using Conn = std::unique_ptr<redisContext, ContextFree>;

 private:
  struct Write {
    std::string key;
    int64_t size = 0;
    std::function<std::string()> entry;  // set for entries
    std::string value;                   // for strings
  };

  // A connected, authenticated context on the selected database, or null
  // with *error set.
  Conn Connect(std::string* error) const;
  // A pooled connection or a new one; *reused says which.
  Conn Take(bool* reused, std::string* error);
  void Give(Conn conn, uint64_t epoch);
  // Runs `fn` on a connection; a pooled one that fails (Redis restarted) is
  // replaced by a fresh one once. On failure the tier goes down.
  bool WithConnection(const std::function<bool(redisContext*)>& fn);
  void MarkDown(const std::string& why);
  void MarkUp();
  void Enqueue(Write w);
  void WriterLoop();
  bool Execute(redisContext* c, const Write& w);
  void Probe(Conn* conn);
  // The writer's: a PING when idle, so that /info notices an outage without
  // a request; and one queued write, retried once on a fresh connection. Both
  // mark the tier down when Redis does not answer.
  void Heartbeat(Conn* conn);
  bool WriteNow(Conn* conn, const Write& w);

  Options options_;
  RedisUrl url_;
  std::atomic<bool> up_{false};

  mutable std::mutex mu_;  // everything below
  std::vector<Conn> idle_;
  uint64_t epoch_ = 0;  // bumped when the tier goes down: older connections are not pooled
  std::chrono::steady_clock::time_point down_since_;
  bool logged_down_ = false;
  std::deque<Write> queue_;
  int64_t queued_bytes_ = 0;
  bool writing_ = false;
  bool stop_ = false;
  RedisTierStats stats_;
  std::condition_variable wake_;     // the writer: work, or stop
  std::condition_variable drained_;  // Flush: the queue emptied
  std::thread writer_;
};

}  // namespace gritserve
