// What containers rely on: flags from GRITSERVE_* variables, the `health`
// subcommand of the image's health check, and replicas that start together on
// one cache directory with no model given (the demo checkpoint).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "http_api_util.h"

namespace gritserve::testing {
namespace {

std::string ModelId(const ServerProcess& server) {
  auto c = server.Client();
  auto res = c->Get("/v1/models");
  return BodyJson(res)["data"][0]["id"].get<std::string>();
}

struct ShellRun {
  int status = -1;
  std::string out;
};

// Runs a shell command line, capturing stdout and stderr together.
ShellRun Shell(const std::string& cmd) {
  ShellRun r;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen((cmd + " 2>&1").c_str(), "r"), ::pclose);
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe.get())) > 0) r.out.append(buf, n);
  const int status = ::pclose(pipe.release());
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A loopback port that nothing listens on (bound, then closed).
int ClosedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(HttpDeploy, EnvironmentSetsServerFlags) {
  ServerProcess server(TinyCheckpointDir(), {},
                       {{"GRITSERVE_MODEL_NAME", "from-env"}, {"GRITSERVE_MAX_TOKENS", "7"}});
  EXPECT_EQ(ModelId(server), "from-env");
  auto c = server.Client();
  Ok(*c, "/generate", {{"prompt", "hi"}, {"max_tokens", 7}});
  ExpectError(PostJson(*c, "/generate", {{"prompt", "hi"}, {"max_tokens", 8}}), 422,
              "max_tokens past GRITSERVE_MAX_TOKENS");
}

TEST(HttpDeploy, FlagWinsOverEnvironmentAndEmptyIsUnset) {
  ServerProcess flagged(TinyCheckpointDir(), {"--model-name", "from-flag"},
                        {{"GRITSERVE_MODEL_NAME", "from-env"}});
  EXPECT_EQ(ModelId(flagged), "from-flag");
  ServerProcess empty(TinyCheckpointDir(), {}, {{"GRITSERVE_MODEL_NAME", ""}});
  EXPECT_EQ(ModelId(empty), std::filesystem::path(TinyCheckpointDir()).filename().string());
}

TEST(HttpDeploy, HealthSubcommand) {
  ServerProcess server(TinyCheckpointDir());
  const std::string port = std::to_string(server.port());
  ShellRun ok = Shell(BinaryPath() + " health --port " + port);
  EXPECT_EQ(ok.status, 0) << ok.out;
  EXPECT_NE(ok.out.find("\"ok\""), std::string::npos) << ok.out;
  ShellRun from_env = Shell("GRITSERVE_PORT=" + port + " " + BinaryPath() + " health");
  EXPECT_EQ(from_env.status, 0) << from_env.out;

  ShellRun down =
      Shell(BinaryPath() + " health --timeout 2 --port " + std::to_string(ClosedPort()));
  EXPECT_EQ(down.status, 1) << down.out;
  EXPECT_NE(down.out.find("\"error\""), std::string::npos) << down.out;
}

// Two servers with no --model start at once on one fresh cache directory, as
// replicas sharing a volume do: both serve the one demo checkpoint they wrote
// (the first rename wins), say it has random weights, and leave no temporary copy.
TEST(HttpDeploy, DemoCheckpointWithConcurrentStarts) {
  const std::string cache = MakeTempDir("demo-cache");
  const std::vector<std::pair<std::string, std::string>> env = {{"XDG_CACHE_HOME", cache}};
  std::unique_ptr<ServerProcess> a, b;
  std::string b_error;
  std::thread start_b([&] {
    try {
      b = std::make_unique<ServerProcess>("", std::vector<std::string>{}, env);
    } catch (const std::exception& e) {
      b_error = e.what();
    }
  });
  try {
    a = std::make_unique<ServerProcess>("", std::vector<std::string>{}, env);
  } catch (const std::exception& e) {
    start_b.join();
    FAIL() << e.what();
  }
  start_b.join();
  ASSERT_TRUE(b) << b_error;
  for (ServerProcess* s : {a.get(), b.get()}) {
    EXPECT_NE(s->Log().find("RANDOM"), std::string::npos) << s->Log();
    EXPECT_EQ(ModelId(*s), "gritserve-demo-random");
    auto c = s->Client();
    json e = Ok(*c, "/embed", {{"inputs", "hello"}});
    EXPECT_EQ(e.size(), 1u);
  }
  std::vector<std::string> entries;
  for (const auto& f : std::filesystem::directory_iterator(cache)) {
    entries.push_back(f.path().filename().string());
  }
  EXPECT_EQ(entries, std::vector<std::string>{"gritserve-demo-checkpoint"});
  EXPECT_TRUE(std::filesystem::exists(cache + "/gritserve-demo-checkpoint/config.json"));
}

}  // namespace
}  // namespace gritserve::testing
