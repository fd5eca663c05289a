// Memory bounded by design: a long input raises the process's peak memory in
// proportion to its tokens (attention in blocks of query rows, the mask as
// intervals, the MLP in row chunks), jobs whose estimate is over the cap are
// refused before they allocate, and freed memory can be handed back.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>

#include "gritserve/common/allocator.h"
#include "gritserve/common/error.h"
#include "gritserve/engine/engine.h"
#include "test_util.h"

namespace gritserve {
namespace {

using testing::ProcStatusBytes;
using testing::ResetPeakResident;

std::unique_ptr<Engine> LoadTiny(int64_t max_job_bytes = 0) {
  EngineOptions o;
  o.model_dir = testing::FixturesDir() + "/qwen2-tiny";
  o.threads = 2;
  o.max_job_bytes = max_job_bytes;
  return Engine::Load(o);
}

EncodedPrompt RandomIds(const FrontEnd& front, int64_t n) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> id(0, 150000);
  std::vector<int32_t> ids(n);
  for (auto& x : ids) x = id(rng);
  return front.EncodeEmbedIds(std::move(ids));
}

// One embedding of 16,384 tokens on the tiny model. Materialising [heads, T,
// T] scores and a [T, T] float mask took its peak up by about 5 GB; in blocks
// it takes a small fraction of the bound below.
TEST(EngineMemory, LongEmbeddingRaisesPeakMemoryLinearly) {
  auto engine = LoadTiny();
  EmbedOptions options;
  engine->runner().Embed({RandomIds(engine->front(), 64)}, options);  // warm up
  ASSERT_TRUE(ResetPeakResident());
  const int64_t before = ProcStatusBytes("VmHWM:");
  ASSERT_GT(before, 0);
  const auto out = engine->runner().Embed({RandomIds(engine->front(), 16384)}, options);
  const int64_t growth = ProcStatusBytes("VmHWM:") - before;
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].size(), 64u);
  EXPECT_LT(growth, int64_t{512} << 20) << "peak grew by " << (growth >> 20) << " MiB";
}

TEST(EngineMemory, EstimatesGrowLinearlyInTokens) {
  auto engine = LoadTiny();
  const FrontEnd& f = engine->front();
  // Equal steps of tokens add (nearly) equal bytes; quadratic growth would
  // add half as much again at the second step.
  const int64_t e12 = f.EmbedJobBytes({RandomIds(f, 12288)}, EmbedStore::kNone);
  const int64_t e20 = f.EmbedJobBytes({RandomIds(f, 20480)}, EmbedStore::kNone);
  const int64_t e28 = f.EmbedJobBytes({RandomIds(f, 28672)}, EmbedStore::kNone);
  EXPECT_GT(e20, e12);
  EXPECT_LT(static_cast<double>(e28 - e20), 1.2 * static_cast<double>(e20 - e12));
  // Within the bound the test above measures.
  EXPECT_LT(f.EmbedJobBytes({RandomIds(f, 16384)}, EmbedStore::kNone), int64_t{512} << 20);
  EXPECT_GT(f.EmbedJobBytes({RandomIds(f, 4096)}, EmbedStore::kKeep),
            f.EmbedJobBytes({RandomIds(f, 4096)}, EmbedStore::kNone));
  GenerateRequest small{{1, 2, 3}, {}, {}, DocPositions::kSequential};
  GenerateRequest longer = small;
  longer.prompt.assign(8000, 5);
  EXPECT_GT(f.GenerateJobBytes(longer), f.GenerateJobBytes(small));
}

TEST(EngineMemory, JobsOverTheCapAreRefusedBeforeTheyRun) {
  auto engine = LoadTiny(int64_t{64} << 20);
  const FrontEnd& f = engine->front();
  EmbedOptions options;
  EXPECT_EQ(engine->runner().Embed({RandomIds(f, 100)}, options).size(), 1u);
  ASSERT_GT(f.EmbedJobBytes({RandomIds(f, 16384)}, EmbedStore::kNone), int64_t{64} << 20);
  try {
    engine->runner().Embed({RandomIds(f, 16384)}, options);
    FAIL() << "a 16k-token embedding ran under a 64 MiB cap";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTooLarge);
    EXPECT_NE(e.message().find("MiB"), std::string::npos) << e.message();
  }
  SamplingParams params;
  params.max_tokens = 2;
  std::vector<int32_t> prompt(16000, 9);
  EXPECT_THROW(engine->runner().Generate(prompt, params), Error);
  EXPECT_EQ(engine->runner().Generate({1, 2, 3}, params).completion_tokens, 2);
}

TEST(EngineMemory, FreedMemoryIsHandedBack) {
  // As the server runs: large blocks come from the heap, which keeps them
  // when freed. 200 MB in 4 MB blocks, freed, stay resident until released.
  ConfigureAllocatorForInference();
  std::vector<void*> blocks;
  for (int i = 0; i < 50; ++i) {
    auto* p = static_cast<char*>(malloc(4 << 20));
    for (int j = 0; j < (4 << 20); j += 4096) p[j] = 1;
    blocks.push_back(p);
  }
  void* keep = malloc(64);  // above them, so the heap's top cannot shrink on its own
  for (void* p : blocks) free(p);
  const int64_t resident = ProcStatusBytes("VmRSS:");
  EXPECT_GE(FreeHeapBytes(), int64_t{150} << 20);
  EXPECT_GE(ReleaseFreedMemory(), int64_t{150} << 20);
  EXPECT_LT(ProcStatusBytes("VmRSS:"), resident - (int64_t{100} << 20));
  free(keep);
}

}  // namespace
}  // namespace gritserve
