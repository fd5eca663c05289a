// The scheduler: queued embedding jobs are merged into one batch without
// changing their answers, a bad job does not fail its neighbours, the queue is
// bounded, and draining refuses new work.
#include <gtest/gtest.h>

#include <future>

#include "gritserve/common/error.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/scheduler.h"
#include "test_util.h"

namespace gritserve {
namespace {

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::MakeTempDir("sched");
    WriteCheckpoint(dir, CheckpointPreset("tiny"));
    EngineOptions o;
    o.model_dir = dir;
    o.threads = 1;
    engine_ = Engine::Load(o).release();
  }
  static void TearDownTestSuite() { delete engine_; }
  static Engine* engine_;
};
Engine* SchedulerTest::engine_ = nullptr;

// Occupies the inference thread until the returned promise is set.
std::promise<void> Block(Scheduler& s, std::future<void>* done) {
  std::promise<void> release;
  auto gate = std::make_shared<std::shared_future<void>>(release.get_future().share());
  *done = s.SubmitTask([gate](Runner&) { gate->wait(); });
  return release;
}

TEST_F(SchedulerTest, QueuedEmbeddingsAreMergedWithUnchangedResults) {
  Scheduler s(engine_->runner(), 64);
  const std::vector<std::string> texts = {"one", "two words", "three words here", "four",
                                          "five five"};
  std::vector<std::vector<float>> expected;
  for (const auto& t : texts)
    expected.push_back(engine_->runner().EmbedTexts({t}, EmbedOptions{})[0]);
  EmbedOptions other;
  other.dimensions = 8;  // different options: must not share the batch

  std::future<void> blocked;
  std::promise<void> release = Block(s, &blocked);
  std::vector<std::future<std::vector<std::vector<float>>>> futures;
  for (const auto& t : texts) {
    futures.push_back(s.SubmitEmbed({engine_->front().EncodeEmbed(t, {})}, EmbedOptions{}));
  }
  auto odd = s.SubmitEmbed({engine_->front().EncodeEmbed("one", other)}, other);
  auto bad = s.SubmitEmbed({engine_->front().EncodeEmbedIds({})}, EmbedOptions{});  // no tokens
  const int64_t batches_before = s.stats().embed_batches;
  release.set_value();
  blocked.get();
  for (size_t i = 0; i < texts.size(); ++i) {
    auto got = futures[i].get();
    ASSERT_EQ(got.size(), 1u);
    for (size_t k = 0; k < got[0].size(); ++k) EXPECT_NEAR(got[0][k], expected[i][k], 1e-5);
  }
  EXPECT_EQ(odd.get()[0].size(), 8u);
  EXPECT_THROW(bad.get(), Error);
  // Seven jobs, but the six with equal options shared one pass.
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.embed_batches - batches_before, 2);
  EXPECT_EQ(st.embed_batch_inputs, 7);
}

// Generation requests queued together start together and every round steps
// all of them in one pass; the answers are those of each run alone.
TEST_F(SchedulerTest, QueuedGenerationsRunTogetherWithUnchangedAnswers) {
  Scheduler s(engine_->runner(), 64);
  const std::vector<std::string> prompts = {"Once upon a time", "The weather", "Why", "A b c d"};
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 5;
  p.ignore_eos = true;
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : prompts) {
    expected.push_back(
        engine_->runner().Generate(engine_->front().EncodeGenerate(t, false), p).tokens);
  }
  std::future<void> blocked;
  std::promise<void> release = Block(s, &blocked);
  std::vector<std::shared_ptr<Sequence>> jobs;
  for (const auto& t : prompts)
    jobs.push_back(s.SubmitGenerate(
        {engine_->front().EncodeGenerate(t, false), p, {}, DocPositions::kSequential}));
  const SchedulerStats before = s.stats();
  release.set_value();
  blocked.get();
  for (size_t i = 0; i < jobs.size(); ++i) EXPECT_EQ(jobs[i]->Wait().tokens, expected[i]) << i;
  const SchedulerStats after = s.stats();
  // Five tokens each: five rounds of all four, not twenty rounds of one.
  EXPECT_EQ(after.generation_rounds - before.generation_rounds, 5);
  EXPECT_EQ(after.generation_round_sequences - before.generation_round_sequences, 20);
}

TEST_F(SchedulerTest, BoundedQueueAndDraining) {
  Scheduler s(engine_->runner(), 2);
  std::future<void> blocked;
  std::promise<void> release = Block(s, &blocked);
  auto a = s.SubmitEmbed({engine_->front().EncodeEmbed("a", {})}, EmbedOptions{});
  try {
    s.SubmitEmbed({engine_->front().EncodeEmbed("b", {})}, EmbedOptions{});
    ADD_FAILURE() << "a third job was admitted past the limit of 2";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kQueueFull);
  }
  release.set_value();
  blocked.get();
  EXPECT_EQ(a.get().size(), 1u);
  EXPECT_TRUE(s.WaitIdle(std::chrono::seconds(10)));
  s.Drain();
  try {
    s.SubmitEmbed({engine_->front().EncodeEmbed("c", {})}, EmbedOptions{});
    ADD_FAILURE() << "a drained scheduler admitted a job";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnavailable);
  }
}

TEST_F(SchedulerTest, JobsNobodyWaitsForAreDroppedUnrun) {
  Scheduler s(engine_->runner(), 8);
  std::future<void> blocked;
  std::promise<void> release = Block(s, &blocked);
  const auto past = std::chrono::steady_clock::now() - std::chrono::milliseconds(1);
  auto late = s.SubmitEmbed({engine_->front().EncodeEmbed("late", {})}, EmbedOptions{},
                            EmbedStore::kNone, {}, past);
  auto timely = s.SubmitEmbed({engine_->front().EncodeEmbed("timely", {})}, EmbedOptions{});
  SamplingParams p;
  p.max_tokens = 4;
  auto gen = s.SubmitGenerate(
      {engine_->front().EncodeGenerate("gone", false), p, {}, DocPositions::kSequential});
  gen->Cancel();  // its client went away while it was queued
  const SchedulerStats before = s.stats();
  release.set_value();
  blocked.get();

  EXPECT_EQ(timely.get().size(), 1u);
  try {
    late.get();
    ADD_FAILURE() << "a job past its deadline ran";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnavailable);
  }
  EXPECT_THROW(gen->Wait(), Error);
  EXPECT_TRUE(s.WaitIdle(std::chrono::seconds(10)));
  const SchedulerStats after = s.stats();
  EXPECT_EQ(after.expired_jobs - before.expired_jobs, 2);
  // Only the timely input went through the model; the cancelled prompt was never prefilled.
  EXPECT_EQ(after.embed_batch_inputs - before.embed_batch_inputs, 1);
  EXPECT_EQ(after.prompt_tokens - before.prompt_tokens,
            static_cast<int64_t>(engine_->front().EncodeEmbed("timely", {}).ids.size()));
  EXPECT_EQ(after.queued, 0);
}

TEST_F(SchedulerTest, GenerationsInterleaveWithEmbeddings) {
  Scheduler s(engine_->runner(), 8);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 3000;  // long enough (~0.5 s) that the embedding lands mid-way
  p.ignore_eos = true;
  auto gen = s.SubmitGenerate(
      {engine_->front().EncodeGenerate("a long story", false), p, {}, DocPositions::kSequential});
  // An embedding submitted after the generation started finishes before it.
  bool done = false;
  std::string first = gen->WaitForText(std::chrono::seconds(30), &done);
  ASSERT_FALSE(done);
  auto emb = s.SubmitEmbed({engine_->front().EncodeEmbed("quick", {})}, EmbedOptions{});
  emb.get();
  EXPECT_GT(s.stats().active_generations, 0);
  GenerateResult r = gen->Wait();
  EXPECT_EQ(r.completion_tokens, 3000);
}

}  // namespace
}  // namespace gritserve
