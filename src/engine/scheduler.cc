#include "gritserve/engine/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "gritserve/common/allocator.h"
#include "gritserve/common/error.h"

namespace gritserve {

namespace {
constexpr size_t kMaxMergedInputs = 256;
// Generation requests that start in one round (their prefills share a pass),
// and their prompt tokens in total.
constexpr size_t kMaxStartingGenerations = 16;
constexpr size_t kMaxStartingTokens = 2048;
// A job estimated above this (FrontEnd::EmbedJobBytes, GenerateJobBytes)
// hands the memory it freed back to the OS once it is done: the allocator
// otherwise keeps it for reuse, and one long input would leave the process
// at its peak size for good.
constexpr int64_t kTrimAfterBytes = int64_t{256} << 20;
}  // namespace

struct Scheduler::Job {
  enum class Kind { kEmbed, kGenerate, kTask } kind;
  std::vector<EncodedPrompt> prompts;
  EmbedOptions options;
  EmbedStore store = EmbedStore::kNone;
  std::vector<std::string> ids;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  std::promise<std::vector<std::vector<float>>> embed_result;
  std::shared_ptr<Sequence> sequence;
  std::function<void(Runner&)> task;
  std::promise<void> task_done;
};

Scheduler::Scheduler(Runner& runner, int64_t max_pending)
    : runner_(runner), max_pending_(max_pending), thread_([this] { Loop(); }) {}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Admit(std::unique_ptr<Job> job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || draining_) throw Error(ErrorKind::kUnavailable, "the server is shutting down");
  if (static_cast<int64_t>(queue_.size()) + active_ >= max_pending_) {
    throw Error(ErrorKind::kQueueFull, "too many requests in flight (limit " +
                                           std::to_string(max_pending_) + "); retry later");
  }
  queue_.push_back(std::move(job));
  stats_.queued = static_cast<int64_t>(queue_.size());
  cv_.notify_one();
}

std::future<std::vector<std::vector<float>>> Scheduler::SubmitEmbed(
    std::vector<EncodedPrompt> prompts, EmbedOptions options, EmbedStore store,
    std::vector<std::string> ids, std::chrono::steady_clock::time_point deadline) {
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::kEmbed;
  job->prompts = std::move(prompts);
  job->options = std::move(options);
  job->store = store;
  job->ids = std::move(ids);
  job->deadline = deadline;
  auto f = job->embed_result.get_future();
  Admit(std::move(job));
  return f;
}

std::shared_ptr<Sequence> Scheduler::SubmitGenerate(GenerateRequest request) {
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::kGenerate;
  job->sequence = std::make_shared<Sequence>(std::move(request));
  auto g = job->sequence;
  Admit(std::move(job));
  return g;
}

std::future<void> Scheduler::SubmitTask(std::function<void(Runner&)> fn) {
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::kTask;
  job->task = std::move(fn);
  auto f = job->task_done.get_future();
  Admit(std::move(job));
  return f;
}

bool Scheduler::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [&] { return queue_.empty() && active_ == 0; });
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

int64_t Scheduler::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size()) + active_;
}

bool Scheduler::ExpireLocked(Job& job) {
  bool expired = false;
  if (job.kind == Job::Kind::kEmbed && std::chrono::steady_clock::now() >= job.deadline) {
    job.embed_result.set_exception(std::make_exception_ptr(
        Error(ErrorKind::kUnavailable, "the request timed out before it started")));
    expired = true;
  }
  if (job.kind == Job::Kind::kGenerate && job.sequence->cancelled()) {
    job.sequence->Complete(std::make_exception_ptr(
        Error(ErrorKind::kUnavailable, "the request was cancelled before it started")));
    expired = true;
  }
  if (expired) ++stats_.expired_jobs;
  return expired;
}

bool Scheduler::Mergeable(const Job& a, const Job& b) {
  const EmbedOptions &x = a.options, &y = b.options;
  // Templates and instructions are already applied to the prompts; what is left
  // must agree for one Embed call to serve both.
  return a.store == EmbedStore::kNone && b.store == EmbedStore::kNone && x.pooling == y.pooling &&
         x.layer == y.layer && x.normalize == y.normalize && x.dimensions == y.dimensions;
}

void Scheduler::RunEmbedBatch(std::vector<std::unique_ptr<Job>>& batch) {
  std::vector<EncodedPrompt> prompts;
  int64_t tokens = 0;
  for (const auto& j : batch) {
    for (const auto& p : j->prompts) {
      prompts.push_back(p);
      tokens += static_cast<int64_t>(p.ids.size());
    }
  }
  {
    // Counted before the answers go out, so a client's next /metrics read sees them.
    std::lock_guard<std::mutex> lock(mu_);
    stats_.embed_batches += 1;
    stats_.embed_batch_inputs += static_cast<int64_t>(prompts.size());
    stats_.prompt_tokens += tokens;
  }
  bool ok = false;
  if (batch.size() > 1) {
    try {
      auto vecs = runner_.Embed(prompts, batch[0]->options);
      size_t at = 0;
      for (auto& j : batch) {
        std::vector<std::vector<float>> mine(
            vecs.begin() + static_cast<std::ptrdiff_t>(at),
            vecs.begin() + static_cast<std::ptrdiff_t>(at + j->prompts.size()));
        at += j->prompts.size();
        j->embed_result.set_value(std::move(mine));
      }
      ok = true;
    } catch (...) {
      // One job's bad input must not fail the others: fall back to one by one.
    }
  }
  if (!ok) {
    for (auto& j : batch) {
      try {
        j->embed_result.set_value(runner_.Embed(j->prompts, j->options, j->store, j->ids));
      } catch (...) {
        j->embed_result.set_exception(std::current_exception());
      }
    }
  }
}

void Scheduler::JobDone(int64_t generated) {
  std::lock_guard<std::mutex> lock(mu_);
  --active_;
  stats_.generated_tokens += generated;
  idle_cv_.notify_all();
}

void Scheduler::RunEmbedJobs(std::unique_ptr<Job> first) {
  // Other queued embedding jobs with the same options join this one's
  // forward passes: many small requests become one padded batch.
  std::vector<std::unique_ptr<Job>> batch;
  batch.push_back(std::move(first));
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t inputs = batch[0]->prompts.size();
    for (auto it = queue_.begin(); it != queue_.end() && inputs < kMaxMergedInputs;) {
      if (ExpireLocked(**it)) {
        it = queue_.erase(it);
      } else if ((*it)->kind == Job::Kind::kEmbed && Mergeable(*batch[0], **it)) {
        inputs += (*it)->prompts.size();
        batch.push_back(std::move(*it));
        it = queue_.erase(it);
        ++active_;
      } else {
        ++it;
      }
    }
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  int64_t bytes = 0;
  for (const auto& j : batch) {
    bytes = std::max(bytes, runner_.front().EmbedJobBytes(j->prompts, j->store));
  }
  RunEmbedBatch(batch);
  for (size_t i = 0; i < batch.size(); ++i) JobDone(0);
  if (bytes > kTrimAfterBytes) ReleaseFreedMemory();
}

void Scheduler::StartSequences(std::unique_ptr<Job> first,
                               std::vector<std::shared_ptr<Sequence>>* active) {
  // Generation jobs queued right behind this one start with it, so their
  // prefills share a forward pass as well.
  std::vector<std::unique_ptr<Job>> starting;
  starting.push_back(std::move(first));
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t tokens = starting[0]->sequence->request().prompt.size();
    while (!queue_.empty() && queue_.front()->kind == Job::Kind::kGenerate &&
           starting.size() < kMaxStartingGenerations &&
           tokens + queue_.front()->sequence->request().prompt.size() <= kMaxStartingTokens) {
      if (ExpireLocked(*queue_.front())) {
        queue_.pop_front();
        continue;
      }
      tokens += queue_.front()->sequence->request().prompt.size();
      starting.push_back(std::move(queue_.front()));
      queue_.pop_front();
      ++active_;
    }
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  for (auto& j : starting) {
    const std::shared_ptr<Sequence>& seq = j->sequence;
    try {
      runner_.Start(*seq);
      active->push_back(seq);
      std::lock_guard<std::mutex> lock(mu_);
      stats_.prompt_tokens += static_cast<int64_t>(seq->request().prompt.size());
      stats_.active_generations = static_cast<int64_t>(active->size());
    } catch (...) {
      seq->Complete(std::current_exception());
      JobDone(0);
    }
  }
}

void Scheduler::StepRound(std::vector<std::shared_ptr<Sequence>>* active) {
  // Every active generation advances one token per round; their decode steps
  // share one forward pass.
  std::vector<Sequence*> seqs;
  for (const auto& s : *active) seqs.push_back(s.get());
  std::vector<std::exception_ptr> errors;
  const std::vector<bool> more = runner_.StepAll(seqs, &errors);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.generation_rounds;
    stats_.generation_round_sequences += static_cast<int64_t>(seqs.size());
  }
  std::vector<std::shared_ptr<Sequence>> still;
  std::vector<std::pair<std::shared_ptr<Sequence>, std::exception_ptr>> ended;
  for (size_t i = 0; i < active->size(); ++i) {
    if (more[i] && !errors[i]) {
      still.push_back(std::move((*active)[i]));
    } else {
      ended.emplace_back(std::move((*active)[i]), errors[i]);
    }
  }
  *active = std::move(still);
  if (!ended.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.active_generations = static_cast<int64_t>(active->size());
  }
  bool large = false;
  for (auto& [finished, error] : ended) {
    large = large || runner_.front().GenerateJobBytes(finished->request()) > kTrimAfterBytes;
    // Counters first, then the answer: a client that reads /metrics right
    // after its response must see its own tokens counted.
    JobDone(finished->started() ? finished->result().completion_tokens : 0);
    finished->Complete(error);
  }
  ended.clear();  // a failed sequence's cache goes with it
  if (large) ReleaseFreedMemory();
}

void Scheduler::FailAll(std::vector<std::shared_ptr<Sequence>>* active) {
  const Error stopping(ErrorKind::kUnavailable, "the server stopped before this request ran");
  for (auto& s : *active) s->Complete(std::make_exception_ptr(stopping));
  active->clear();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& j : queue_) {
    auto err = std::make_exception_ptr(stopping);
    if (j->kind == Job::Kind::kEmbed) j->embed_result.set_exception(err);
    if (j->kind == Job::Kind::kTask) j->task_done.set_exception(err);
    if (j->kind == Job::Kind::kGenerate) j->sequence->Complete(err);
  }
  queue_.clear();
  active_ = 0;
  stats_.active_generations = 0;
  idle_cv_.notify_all();
}

void Scheduler::Loop() {
  std::vector<std::shared_ptr<Sequence>> active;
  while (true) {
    std::unique_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !active.empty(); });
      if (stop_) break;
      while (!queue_.empty() && ExpireLocked(*queue_.front())) queue_.pop_front();
      if (!queue_.empty()) {
        job = std::move(queue_.front());
        queue_.pop_front();
        ++active_;
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
      if (queue_.empty() && active_ == 0) idle_cv_.notify_all();
    }
    // One queued job between rounds of generation steps.
    if (job && job->kind == Job::Kind::kEmbed) RunEmbedJobs(std::move(job));
    if (job && job->kind == Job::Kind::kGenerate) StartSequences(std::move(job), &active);
    if (job && job->kind == Job::Kind::kTask) {
      try {
        job->task(runner_);
        job->task_done.set_value();
      } catch (...) {
        job->task_done.set_exception(std::current_exception());
      }
      JobDone(0);
    }
    if (!active.empty()) StepRound(&active);
  }
  // Stopped: nothing left may wait forever.
  FailAll(&active);
}

}  // namespace gritserve
