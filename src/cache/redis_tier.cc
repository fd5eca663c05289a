#include "gritserve/cache/redis_tier.h"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <stdexcept>
#include <thread>

namespace gritserve {
namespace {

using Clock = std::chrono::steady_clock;

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// Connections idle in the pool at most: one per HTTP thread that reads at once.
constexpr size_t kMaxIdle = 8;
// The writer's reconnection delays, and how often it checks an idle Redis:
// without that, /info would call the tier up until a request found it down.
constexpr std::chrono::milliseconds kFirstBackoff{100}, kMaxBackoff{5000}, kHeartbeat{1000};
// The writer's tries before it calls Redis down, kRetryPause times the try
// number apart: a name lookup or connection that fails once (a container
// network's DNS answers "no address" now and then) would otherwise mark the
// tier down and drop every queued write, so documents embedded in that
// instant never reached the other replicas.
constexpr int kWriterTries = 3;
constexpr std::chrono::milliseconds kRetryPause{100};

int ParseInt(const std::string& s, int lo, int hi, const std::string& what) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) {
    throw std::invalid_argument("bad " + what + " '" + s + "'");
  }
  const int v = std::stoi(s);
  if (v < lo || v > hi) throw std::invalid_argument(what + " out of range");
  return v;
}

// %XX escapes, as a password with '@' or ':' must be written in a URL.
std::string PercentDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

timeval Timeval(int ms) { return timeval{ms / 1000, static_cast<suseconds_t>((ms % 1000) * 1000)}; }

std::string ReplyError(const redisReply* r) {
  return r == nullptr ? "no reply" : std::string(r->str, r->len);
}

// An entry hash's chunks joined; nullopt when absent or incomplete (a hash
// never is, unless something else wrote under the key).
std::optional<std::string> JoinChunks(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->elements % 2 != 0) {
    return std::nullopt;
  }
  const size_t fields = r->elements / 2;
  std::vector<const redisReply*> parts;
  size_t n = 0;
  for (size_t i = 0; i < fields; ++i) {
    const redisReply* f = r->element[2 * i];
    if (f->type == REDIS_REPLY_STRING && std::string_view(f->str, f->len) == "n") {
      try {
        n = static_cast<size_t>(
            std::stoul(std::string(r->element[2 * i + 1]->str, r->element[2 * i + 1]->len)));
      } catch (const std::exception&) {
        return std::nullopt;
      }
    }
  }
  if (n == 0 || n + 1 != fields) return std::nullopt;
  parts.assign(n, nullptr);
  for (size_t i = 0; i < fields; ++i) {
    const redisReply* f = r->element[2 * i];
    const redisReply* v = r->element[2 * i + 1];
    if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) return std::nullopt;
    const std::string name(f->str, f->len);
    if (name == "n") continue;
    if (name.empty() || name.size() > 9 ||
        name.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    const size_t idx = std::stoul(name);
    if (idx >= n) return std::nullopt;
    parts[idx] = v;
  }
  size_t total = 0;
  for (const redisReply* p : parts) {
    if (p == nullptr) return std::nullopt;
    total += p->len;
  }
  std::string out;
  out.reserve(total);
  for (const redisReply* p : parts) out.append(p->str, p->len);
  return out;
}

bool Ping(redisContext* c) {
  Reply r(static_cast<redisReply*>(redisCommand(c, "PING")));
  return r != nullptr && r->type != REDIS_REPLY_ERROR;
}

}  // namespace

std::string RedisUrl::Display() const {
  const bool v6 = host.find(':') != std::string::npos;
  return "redis://" + std::string(user.empty() && password.empty() ? "" : user + ":***@") +
         (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + "/" + std::to_string(db);
}

RedisUrl ParseRedisUrl(const std::string& url) {
  const std::string scheme = "redis://";
  if (url.compare(0, scheme.size(), scheme) != 0) {
    throw std::invalid_argument("expected redis://[:password@]host:port[/db], got '" + url + "'");
  }
  RedisUrl u;
  std::string rest = url.substr(scheme.size());
  const size_t at = rest.rfind('@');
  if (at != std::string::npos) {
    const std::string userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const size_t colon = userinfo.find(':');
    if (colon == std::string::npos) {
      u.password = PercentDecode(userinfo);
    } else {
      u.user = PercentDecode(userinfo.substr(0, colon));
      u.password = PercentDecode(userinfo.substr(colon + 1));
    }
  }
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  if (slash != std::string::npos && slash + 1 < rest.size()) {
    u.db = ParseInt(rest.substr(slash + 1), 0, 1 << 20, "database");
  }
  std::string port;
  if (!hostport.empty() && hostport[0] == '[') {
    const size_t close = hostport.find(']');
    if (close == std::string::npos) throw std::invalid_argument("bad host");
    u.host = hostport.substr(1, close - 1);
    if (close + 1 < hostport.size()) {
      if (hostport[close + 1] != ':') throw std::invalid_argument("bad host");
      port = hostport.substr(close + 2);
    }
  } else {
    const size_t colon = hostport.rfind(':');
    u.host = hostport.substr(0, colon);
    if (colon != std::string::npos) port = hostport.substr(colon + 1);
  }
  if (u.host.empty()) throw std::invalid_argument("no host in '" + url + "'");
  if (!port.empty()) u.port = ParseInt(port, 1, 65535, "port");
  return u;
}

std::vector<std::string_view> SplitChunks(std::string_view bytes, size_t chunk_bytes) {
  std::vector<std::string_view> out;
  const size_t step = std::max<size_t>(chunk_bytes, 1);
  for (size_t at = 0; at < bytes.size(); at += step) out.push_back(bytes.substr(at, step));
  if (out.empty()) out.push_back(bytes);
  return out;
}

void RedisTier::ContextFree::operator()(redisContext* c) const { redisFree(c); }

RedisTier::RedisTier(Options options) : options_(std::move(options)) {
  url_ = ParseRedisUrl(options_.url);
  // hiredis writes with write(2): a Redis that closed the connection would
  // kill a process that still has the default SIGPIPE action (the server
  // ignores it already; tools and tests may not).
  struct sigaction old {};
  if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
    std::signal(SIGPIPE, SIG_IGN);
  }
  std::string error;
  Conn c = Connect(&error);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (c && Ping(c.get())) {
      up_ = true;
      idle_.push_back(std::move(c));
      spdlog::info("document cache: Redis tier at {} (keys {}*)", url_.Display(), options_.prefix);
    } else {
      down_since_ = Clock::now();
      logged_down_ = true;
      stats_.outages += 1;
      spdlog::warn(
          "document cache: Redis at {} unreachable ({}); serving without it, reconnecting in "
          "the background",
          url_.Display(), c ? std::string(c->errstr) : error);
    }
  }
  writer_ = std::thread([this] { WriterLoop(); });
}

RedisTier::~RedisTier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  writer_.join();
}

RedisTier::Conn RedisTier::Connect(std::string* error) const {
  const timeval tv = Timeval(options_.timeout_ms);
  Conn c(redisConnectWithTimeout(url_.host.c_str(), url_.port, tv));
  if (!c || c->err) {
    *error = c ? c->errstr : "cannot allocate a connection";
    return nullptr;
  }
  redisSetTimeout(c.get(), tv);
  auto check = [&](redisReply* raw, const char* what) {
    Reply r(raw);
    if (r != nullptr && r->type != REDIS_REPLY_ERROR) return true;
    *error = std::string(what) + ": " + (r ? ReplyError(r.get()) : std::string(c->errstr));
    return false;
  };
  if (!url_.password.empty()) {
    redisReply* r = url_.user.empty()
                        ? static_cast<redisReply*>(redisCommand(
                              c.get(), "AUTH %b", url_.password.data(), url_.password.size()))
                        : static_cast<redisReply*>(redisCommand(
                              c.get(), "AUTH %b %b", url_.user.data(), url_.user.size(),
                              url_.password.data(), url_.password.size()));
    if (!check(r, "AUTH")) return nullptr;
  }
  if (url_.db != 0 &&
      !check(static_cast<redisReply*>(redisCommand(c.get(), "SELECT %d", url_.db)), "SELECT")) {
    return nullptr;
  }
  return c;
}

RedisTier::Conn RedisTier::Take(bool* reused, std::string* error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      Conn c = std::move(idle_.back());
      idle_.pop_back();
      *reused = true;
      return c;
    }
  }
  *reused = false;
  return Connect(error);
}

void RedisTier::Give(Conn conn, uint64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  if (epoch == epoch_ && up_ && idle_.size() < kMaxIdle) idle_.push_back(std::move(conn));
}

bool RedisTier::WithConnection(const std::function<bool(redisContext*)>& fn) {
  std::string error = "not connected";
  for (int attempt = 0; attempt < 2 && up_; ++attempt) {
    uint64_t epoch = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      epoch = epoch_;
    }
    bool reused = false;
    Conn c = Take(&reused, &error);
    if (!c) break;
    if (fn(c.get())) {
      Give(std::move(c), epoch);
      return true;
    }
    error = c->errstr;
    if (!reused) break;  // a fresh connection failed too: Redis is down or slow
    // Redis restarted, most likely: every pooled connection is as stale.
    std::lock_guard<std::mutex> lock(mu_);
    idle_.clear();
    epoch_ += 1;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.errors += 1;
  }
  MarkDown(error);
  return false;
}

void RedisTier::MarkDown(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!up_) return;
  up_ = false;
  epoch_ += 1;
  idle_.clear();
  down_since_ = Clock::now();
  stats_.outages += 1;
  spdlog::warn(
      "document cache: Redis at {} unreachable ({}); serving without it (counted in "
      "gritserve_doc_cache_redis_outages_total), reconnecting in the background",
      url_.Display(), why);
  wake_.notify_all();
}

void RedisTier::MarkUp() {
  std::lock_guard<std::mutex> lock(mu_);
  if (up_) return;
  up_ = true;
  const double secs = std::chrono::duration<double>(Clock::now() - down_since_).count();
  spdlog::info("document cache: Redis at {} reachable again after {:.1f} s", url_.Display(), secs);
}

std::vector<std::optional<std::string>> RedisTier::GetEntries(
    const std::vector<std::string>& keys) {
  std::vector<std::optional<std::string>> out(keys.size());
  if (keys.empty() || !up_) return out;
  const auto t0 = Clock::now();
  const bool ok = WithConnection([&](redisContext* c) {
    for (const std::string& k : keys) {
      if (redisAppendCommand(c, "HGETALL %b", k.data(), k.size()) != REDIS_OK) return false;
    }
    for (auto& o : out) {
      void* raw = nullptr;
      if (redisGetReply(c, &raw) != REDIS_OK) return false;
      Reply r(static_cast<redisReply*>(raw));
      o = JoinChunks(r.get());
    }
    return true;
  });
  if (!ok) return std::vector<std::optional<std::string>>(keys.size());
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.latency.Record(secs);
  for (const auto& o : out) {
    stats_.hits += o ? 1 : 0;
    stats_.misses += o ? 0 : 1;
    stats_.read_bytes += o ? static_cast<int64_t>(o->size()) : 0;
  }
  return out;
}

std::optional<std::string> RedisTier::GetString(const std::string& key) {
  std::optional<std::string> out;
  if (!up_) return out;
  const bool ok = WithConnection([&](redisContext* c) {
    Reply r(static_cast<redisReply*>(redisCommand(c, "GET %b", key.data(), key.size())));
    if (r == nullptr) return false;
    if (r->type == REDIS_REPLY_STRING) out = std::string(r->str, r->len);
    return true;
  });
  std::lock_guard<std::mutex> lock(mu_);
  if (ok) {
    stats_.id_hits += out ? 1 : 0;
    stats_.id_misses += out ? 0 : 1;
  }
  return out;
}

void RedisTier::CountCorrupt() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.corrupt += 1;
}

int64_t RedisTier::Delete(const std::vector<std::string>& keys) {
  int64_t deleted = 0;
  if (keys.empty() || !up_) return deleted;
  std::vector<const char*> argv{"DEL"};
  std::vector<size_t> lens{3};
  for (const std::string& k : keys) {
    argv.push_back(k.data());
    lens.push_back(k.size());
  }
  WithConnection([&](redisContext* c) {
    Reply r(static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
    if (r != nullptr && r->type == REDIS_REPLY_INTEGER) deleted = r->integer;
    return r != nullptr;
  });
  return deleted;
}

void RedisTier::PutEntry(std::string key, int64_t size, std::function<std::string()> bytes) {
  Write w;
  w.key = std::move(key);
  w.size = size;
  w.entry = std::move(bytes);
  Enqueue(std::move(w));
}

void RedisTier::PutString(std::string key, std::string value) {
  Write w;
  w.key = std::move(key);
  w.size = static_cast<int64_t>(value.size());
  w.value = std::move(value);
  Enqueue(std::move(w));
}

void RedisTier::Enqueue(Write w) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Down: nothing would take it; full: the writer is behind Redis.
    if (!up_ || queued_bytes_ + w.size > options_.queue_bytes) {
      stats_.write_drops += 1;
      return;
    }
    queued_bytes_ += w.size;
    queue_.push_back(std::move(w));
  }
  wake_.notify_all();
}

RedisTierStats RedisTier::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  RedisTierStats s = stats_;
  s.up = up_;
  return s;
}

void RedisTier::Flush() {
  std::unique_lock<std::mutex> lock(mu_);
  drained_.wait(lock, [&] { return queue_.empty() && !writing_; });
}

// An entry replaces any older value whole (MULTI/EXEC), so readers see one
// complete value or none.
bool RedisTier::Execute(redisContext* c, const Write& w) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  auto arg = [&](std::string_view s) {
    argv.push_back(s.data());
    lens.push_back(s.size());
  };
  std::string bytes, count;
  std::vector<std::string> names;
  if (w.entry) {
    bytes = w.entry();
    const std::vector<std::string_view> chunks = SplitChunks(bytes, options_.chunk_bytes);
    count = std::to_string(chunks.size());
    for (size_t i = 0; i < chunks.size(); ++i) names.push_back(std::to_string(i));
    arg("HSET");
    arg(w.key);
    arg("n");
    arg(count);
    for (size_t i = 0; i < chunks.size(); ++i) {
      arg(names[i]);
      arg(chunks[i]);
    }
  } else {
    arg("SET");
    arg(w.key);
    arg(w.value);
  }
  const bool pipelined = redisAppendCommand(c, "MULTI") == REDIS_OK &&
                         redisAppendCommand(c, "DEL %b", w.key.data(), w.key.size()) == REDIS_OK &&
                         redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(),
                                                lens.data()) == REDIS_OK &&
                         redisAppendCommand(c, "EXEC") == REDIS_OK;
  if (!pipelined) return false;
  std::string error;
  for (int i = 0; i < 4; ++i) {
    void* raw = nullptr;
    if (redisGetReply(c, &raw) != REDIS_OK) return false;
    Reply r(static_cast<redisReply*>(raw));
    if (r->type == REDIS_REPLY_ERROR && error.empty()) error = ReplyError(r.get());
    if (i == 3 && r->type == REDIS_REPLY_ARRAY) {
      for (size_t j = 0; j < r->elements; ++j) {
        if (r->element[j]->type == REDIS_REPLY_ERROR && error.empty()) {
          error = ReplyError(r->element[j]);
        }
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!error.empty()) {
    // Redis answered (full without an eviction policy, a value over its
    // limits): this write is lost, the tier is not down.
    stats_.errors += 1;
    stats_.write_drops += 1;
    spdlog::debug("document cache: Redis refused {}: {}", w.key, error);
    return true;
  }
  stats_.writes += 1;
  stats_.written_bytes += static_cast<int64_t>(w.entry ? bytes.size() : w.value.size());
  return true;
}

// Down: connect and PING, with *conn the writer's connection on success.
void RedisTier::Probe(Conn* conn) {
  std::string error;
  Conn c = Connect(&error);
  if (c && Ping(c.get())) {
    *conn = std::move(c);
    MarkUp();
  }
}

void RedisTier::Heartbeat(Conn* conn) {
  std::string error = "no answer to PING";
  bool ok = *conn && Ping(conn->get());
  // A connection from before a restart, or a lookup that failed once: fresh ones.
  for (int attempt = 1; attempt < kWriterTries && !ok; ++attempt) {
    if (attempt > 1) std::this_thread::sleep_for(kRetryPause * (attempt - 1));
    *conn = Connect(&error);
    ok = *conn && Ping(conn->get());
  }
  if (!ok) MarkDown(error);
}

bool RedisTier::WriteNow(Conn* conn, const Write& w) {
  std::string error = "not connected";
  bool ok = false;
  for (int attempt = 0; attempt < kWriterTries && !ok; ++attempt) {  // on a fresh connection
    if (attempt > 0) std::this_thread::sleep_for(kRetryPause * attempt);
    if (!*conn) *conn = Connect(&error);
    if (!*conn) continue;
    try {
      ok = Execute(conn->get(), w);
    } catch (const std::exception& e) {  // the value could not be made: nothing to send
      spdlog::warn("document cache: not writing {} to Redis: {}", w.key, e.what());
      ok = true;
    }
    if (!ok) {
      error = (*conn)->errstr;
      conn->reset();
    }
  }
  if (!ok) MarkDown(error);
  return ok;
}

void RedisTier::WriterLoop() {
  Conn conn;  // the writer's own, apart from the pool
  std::chrono::milliseconds backoff = kFirstBackoff;
  Clock::time_point next_probe = Clock::now() + backoff;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (!up_) {
      conn.reset();
      stats_.write_drops += static_cast<int64_t>(queue_.size());
      queue_.clear();
      queued_bytes_ = 0;
      drained_.notify_all();
      if (stop_) break;
      if (Clock::now() < next_probe) {
        wake_.wait_until(lock, next_probe);
        continue;
      }
      lock.unlock();
      Probe(&conn);
      lock.lock();
      backoff = up_ ? kFirstBackoff : std::min(backoff * 2, kMaxBackoff);
      next_probe = Clock::now() + backoff;
      continue;
    }
    if (queue_.empty()) {
      drained_.notify_all();
      if (stop_) break;
      if (wake_.wait_for(lock, kHeartbeat) == std::cv_status::timeout && queue_.empty() && up_ &&
          !stop_) {
        lock.unlock();
        Heartbeat(&conn);
        lock.lock();
        next_probe = Clock::now() + backoff;
      }
      continue;
    }
    Write w = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.unlock();
    const bool ok = WriteNow(&conn, w);
    lock.lock();
    writing_ = false;
    queued_bytes_ -= w.size;
    if (!ok) {
      stats_.errors += 1;
      stats_.write_drops += 1;
      next_probe = Clock::now() + backoff;
    }
  }
}

}  // namespace gritserve
