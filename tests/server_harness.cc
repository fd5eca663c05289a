#include "server_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "test_util.h"

namespace gritserve::testing {

std::string TinyCheckpointDir() {
  static std::once_flag once;
  static std::string dir;
  std::call_once(once, [] {
    dir = MakeTempDir("http-tiny");
    const std::string cmd =
        BinaryPath() + " make-checkpoint --preset tiny --out " + dir + " > " + dir + ".log 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      throw std::runtime_error("make-checkpoint failed: " + ReadFile(dir + ".log"));
    }
  });
  return dir;
}

// The port a server started with --port 0 names in its "listening on" log
// line, or 0 while it has not written it yet.
int LoggedPort(const std::string& log) {
  const std::string mark = "listening on http://127.0.0.1:";
  const size_t at = log.find(mark);
  if (at == std::string::npos) return 0;
  return std::atoi(log.c_str() + at + mark.size());
}

ServerProcess::ServerProcess(const std::string& model_dir, std::vector<std::string> extra_args,
                             std::vector<std::pair<std::string, std::string>> env) {
  log_path_ = MakeTempDir("server-log") + "/server.log";
  // The server binds any free port itself: a port picked here and handed over
  // could be taken by a server of a test running alongside in between.
  std::vector<std::string> args = {BinaryPath(), "--port", "0", "--threads", "1"};
  if (!model_dir.empty()) args.insert(args.begin() + 1, {"--model", model_dir});
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  pid_ = ::fork();
  if (pid_ == 0) {
    for (const auto& [name, value] : env) ::setenv(name.c_str(), value.c_str(), 1);
    int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!Running()) throw std::runtime_error("server exited at start-up:\n" + Log());
    if (port_ == 0) port_ = LoggedPort(Log());
    if (port_ == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    httplib::Client c("127.0.0.1", port_);
    c.set_connection_timeout(1, 0);
    if (auto res = c.Get("/health"); res && res->status == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("server not healthy within 60 s:\n" + Log());
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && Running()) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

std::unique_ptr<httplib::Client> ServerProcess::Client(const std::string& api_key) const {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
  c->set_connection_timeout(5, 0);
  c->set_read_timeout(120, 0);
  c->set_write_timeout(60, 0);
  if (!api_key.empty()) c->set_bearer_token_auth(api_key);
  return c;
}

bool ServerProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

int ServerProcess::Signal(int sig, std::chrono::seconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, sig);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::string ServerProcess::Log() const {
  try {
    return ReadFile(log_path_);
  } catch (...) {
    return "(no log)";
  }
}

}  // namespace gritserve::testing
