// work_steal::ParallelFor: every item runs exactly once, each thread starts on
// its own contiguous share in memory order, and a thread that finishes early
// takes what a slow one has not started.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gritserve/kernels/work_steal.h"

namespace gritserve {
namespace {

// Runs ParallelFor over n items, recording how often each ran and which thread
// ran it.
struct Record {
  std::vector<std::atomic<int>> runs;
  std::vector<int> thread;
  explicit Record(int64_t n) : runs(n), thread(n, -1) {}
};

TEST(WorkSteal, EveryItemRunsExactlyOnce) {
  for (int64_t n : {0, 1, 2, 3, 7, 64, 1001}) {
    Record rec(n);
    work_steal::ParallelFor(n, [&](int64_t i, int64_t next) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, n);
      ASSERT_GE(next, -1);
      ASSERT_LT(next, n);
      ASSERT_NE(next, i);
      rec.runs[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(rec.runs[i].load(), 1) << "n=" << n << " item " << i;
  }
}

// Sets LibTorch's intra-op thread count for one test.
class Threads {
 public:
  explicit Threads(int n) : saved_(at::get_num_threads()) { at::set_num_threads(n); }
  ~Threads() { at::set_num_threads(saved_); }

 private:
  int saved_;
};

TEST(WorkSteal, IdleThreadTakesTheSlowThreadsUnstartedItems) {
  Threads two(2);  // shares [0, 20) and [20, 40)
  const int64_t n = 40;
  Record rec(n);
  work_steal::ParallelFor(n, [&](int64_t i, int64_t) {
    const int t = at::get_thread_num();
    rec.thread[i] = t;
    rec.runs[i].fetch_add(1);
    // The second share is slow: the first share's thread, done early,
    // must take items from its back.
    if (i >= n / 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(rec.runs[i].load(), 1) << i;
  EXPECT_NE(rec.thread[0], rec.thread[n / 2]);          // two threads, one share each
  EXPECT_EQ(rec.thread[n - 1], rec.thread[0]);          // the last item was taken
  EXPECT_EQ(rec.thread[n / 2 + 1], rec.thread[n / 2]);  // the owner walks forward
}

TEST(WorkSteal, OwnThreadWalksItsShareForwardWithNextHints) {
  // One thread (a single-thread build, or called inside a parallel region):
  // items in order, each naming the next.
  Threads one(1);
  std::vector<std::pair<int64_t, int64_t>> seen;
  work_steal::ParallelFor(5, [&](int64_t i, int64_t next) { seen.emplace_back(i, next); });
  const std::vector<std::pair<int64_t, int64_t>> want = {{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, -1}};
  EXPECT_EQ(seen, want);
}

}  // namespace
}  // namespace gritserve
