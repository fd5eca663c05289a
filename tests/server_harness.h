// Runs the real gritserve binary on a free loopback port for HTTP tests.
#pragma once

#include <httplib.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace gritserve::testing {

// A tiny generated Qwen2 checkpoint (made once per test process with the
// binary's own make-checkpoint subcommand).
std::string TinyCheckpointDir();

class ServerProcess {
 public:
  // Starts `gritserve --model DIR --port 0 <extra_args>` (any free port, read
  // back from its log; no --model when DIR is empty: the demo checkpoint) with
  // `env` added to its environment, and waits until /health answers 200
  // (throws with the server log if it does not within 60 s).
  explicit ServerProcess(const std::string& model_dir, std::vector<std::string> extra_args = {},
                         std::vector<std::pair<std::string, std::string>> env = {});
  ~ServerProcess();  // SIGKILL if still running
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // A client with generous timeouts; `api_key` adds the bearer header.
  std::unique_ptr<httplib::Client> Client(const std::string& api_key = "") const;
  // Sends `sig` and waits for exit; returns the exit status (or 128 + signal,
  // or -1 on timeout).
  int Signal(int sig, std::chrono::seconds timeout = std::chrono::seconds(30));
  bool Running();
  std::string Log() const;

 private:
  int port_ = 0;
  pid_t pid_ = -1;
  std::string log_path_;
};

}  // namespace gritserve::testing
