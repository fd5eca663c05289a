// The one inference thread and its bounded queue. HTTP threads submit jobs and
// wait on them; the inference thread drives the Runner, runs embedding jobs as
// they come and steps every active generation one token at a time, so a long
// generation never blocks embeddings (or other generations) for its length.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gritserve/engine/engine.h"

namespace gritserve {

struct SchedulerStats {
  int64_t queued = 0;  // jobs waiting to start
  int64_t active_generations = 0;
  int64_t embed_batches = 0;               // forward passes run for embeddings
  int64_t embed_batch_inputs = 0;          // inputs in those passes (sum)
  int64_t prompt_tokens = 0;               // tokens in (embedding inputs and prompts)
  int64_t generated_tokens = 0;            // tokens out
  int64_t generation_rounds = 0;           // rounds that stepped at least one generation
  int64_t generation_round_sequences = 0;  // generations stepped in those rounds (sum)
  // Jobs dropped unrun because their client had stopped waiting (its
  // --request-timeout passed, or a generation was cancelled) before they started.
  int64_t expired_jobs = 0;
};

class Scheduler {
 public:
  // max_pending bounds queued + active jobs; past it Submit* throws kQueueFull.
  Scheduler(Runner& runner, int64_t max_pending);
  ~Scheduler();  // Stop()s

  // A job still queued at `deadline` is dropped unrun (its future then holds a
  // kUnavailable error): the client that waited for it has already been answered.
  std::future<std::vector<std::vector<float>>> SubmitEmbed(
      std::vector<EncodedPrompt> prompts, EmbedOptions options,
      EmbedStore store = EmbedStore::kNone, std::vector<std::string> ids = {},
      std::chrono::steady_clock::time_point deadline =
          std::chrono::steady_clock::time_point::max());
  // The sequence to wait on (its text and result). One cancelled before it
  // starts is dropped unrun.
  std::shared_ptr<Sequence> SubmitGenerate(GenerateRequest request);
  // Runs `fn` on the inference thread (for work that touches the model).
  std::future<void> SubmitTask(std::function<void(Runner&)> fn);

  // Refuses new jobs (kUnavailable) from now on; running ones continue.
  void Drain() { draining_ = true; }
  // Waits until no job is queued or active, up to `timeout`; true if idle.
  bool WaitIdle(std::chrono::milliseconds timeout);
  // Cancels what is left and joins the thread.
  void Stop();

  SchedulerStats stats() const;
  int64_t pending() const;

 private:
  struct Job;
  void Admit(std::unique_ptr<Job> job);
  void Loop();
  static bool Mergeable(const Job& a, const Job& b);
  // True (and the job answered and counted) when nobody waits for it any more.
  bool ExpireLocked(Job& job);
  void RunEmbedBatch(std::vector<std::unique_ptr<Job>>& batch);
  // Loop's parts: one queued job between rounds, then one round of steps.
  void RunEmbedJobs(std::unique_ptr<Job> first);
  void StartSequences(std::unique_ptr<Job> first, std::vector<std::shared_ptr<Sequence>>* active);
  void StepRound(std::vector<std::shared_ptr<Sequence>>* active);
  void JobDone(int64_t generated);
  void FailAll(std::vector<std::shared_ptr<Sequence>>* active);

  Runner& runner_;
  const int64_t max_pending_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // wakes the inference thread
  std::condition_variable idle_cv_;  // wakes WaitIdle
  std::deque<std::unique_ptr<Job>> queue_;
  int64_t active_ = 0;
  bool stop_ = false;
  std::atomic<bool> draining_{false};
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace gritserve
