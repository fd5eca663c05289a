// A real redis-server (Debian's package) on a loopback port the test picks,
// for the Redis tier's tests; killed when the object goes. Also a raw client
// (hiredis) for tests that look at or damage what the server stored.
#pragma once

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace gritserve::testing {

// A loopback port free right now (bound, read back, released).
inline int FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("no free loopback port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct RedisFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
using RedisConn = std::unique_ptr<redisContext, RedisFree>;
struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using RedisReplyPtr = std::unique_ptr<redisReply, ReplyFree>;

class RedisProcess {
 public:
  // Starts on a free port (another one if that was taken meanwhile).
  RedisProcess() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = FreeLoopbackPort();
      if (Start()) return;
    }
    throw std::runtime_error("redis-server did not start");
  }
  ~RedisProcess() { Kill(); }
  RedisProcess(const RedisProcess&) = delete;
  RedisProcess& operator=(const RedisProcess&) = delete;

  int port() const { return port_; }
  std::string Url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);  // a stopped server must be able to die
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void Stop() { ::kill(pid_, SIGSTOP); }  // a hung Redis: connections open, no answers
  void Continue() { ::kill(pid_, SIGCONT); }
  // Starts again on the same port (empty: no persistence).
  bool Restart() {
    Kill();
    for (int attempt = 0; attempt < 50; ++attempt) {  // the old socket may linger briefly
      if (Start()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  RedisConn Connect() const {
    RedisConn c(redisConnect("127.0.0.1", port_));
    if (!c || c->err) throw std::runtime_error("cannot connect to redis-server");
    return c;
  }
  // A command given as separate (binary-safe) arguments.
  RedisReplyPtr Command(const std::vector<std::string>& args) const {
    RedisConn c = Connect();
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    return RedisReplyPtr(static_cast<redisReply*>(
        redisCommandArgv(c.get(), static_cast<int>(argv.size()), argv.data(), lens.data())));
  }
  std::vector<std::string> Keys(const std::string& pattern) const {
    std::vector<std::string> out;
    RedisReplyPtr r = Command({"KEYS", pattern});
    for (size_t i = 0; r && i < r->elements; ++i) {
      out.emplace_back(r->element[i]->str, r->element[i]->len);
    }
    return out;
  }

 private:
  bool Start() {
    const std::string port = std::to_string(port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      if (::freopen("/dev/null", "w", stdout) == nullptr) ::_exit(126);
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--daemonize", "no", nullptr);
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {  // exited: the port was taken
        pid_ = -1;
        return false;
      }
      RedisConn c(redisConnect("127.0.0.1", port_));
      if (c && !c->err) {
        RedisReplyPtr r(static_cast<redisReply*>(redisCommand(c.get(), "PING")));
        if (r && r->type == REDIS_REPLY_STATUS) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Kill();
    return false;
  }

  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace gritserve::testing
