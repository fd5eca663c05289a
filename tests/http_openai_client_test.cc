// Runs tests/openai_client (the official openai npm SDK, through node's test
// runner) against the real server, so that CTest covers what real OpenAI
// clients send and parse. scripts/setup.sh installs the SDK with `npm ci`.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "server_harness.h"

namespace gritserve::testing {
namespace {

const std::string kClientDir = std::string(GRITSERVE_SOURCE_DIR) + "/tests/openai_client";

// Runs `cmd` through the shell; returns its exit status and appends its
// stdout and stderr to `output`.
int RunCommand(const std::string& cmd, std::string* output) {
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), pipe)) > 0;) output->append(buf, n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(OpenAiClientTest, OfficialSdkAgreesWithNativeRoutes) {
  // A missing toolchain or install is a failure, not a skip: otherwise the
  // OpenAI compatibility would silently go untested.
  std::string version;
  ASSERT_EQ(RunCommand("node --version", &version), 0)
      << "node is not installed (scripts/setup.sh installs it): " << version;
  ASSERT_TRUE(std::filesystem::exists(kClientDir + "/node_modules/openai/package.json"))
      << "the openai SDK is not installed; run scripts/setup.sh or `npm ci --prefix " << kClientDir
      << "`";

  ServerProcess server(TinyCheckpointDir());
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port());
  // node resolves `openai` from the test file's own folder (its node_modules),
  // so the working directory does not matter; `timeout` turns a hang into a failure.
  const std::string cmd =
      "GRITSERVE_URL=" + url + " timeout 120 node --test " + kClientDir + "/openai.test.mjs";
  std::string output;
  const int rc = RunCommand(cmd, &output);
  EXPECT_EQ(rc, 0) << cmd << "\n" << output << "\nserver log:\n" << server.Log();
  EXPECT_TRUE(server.Running()) << server.Log();
}

}  // namespace
}  // namespace gritserve::testing
