#include "gritserve/kernels/work_steal.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "gritserve/common/error.h"

namespace gritserve::work_steal {
namespace {

// One thread's share [begin, end), both ends packed into one word so that the
// owner (front) and a thief (back) can never take the same item.
class Share {
 public:
  void Reset(int64_t begin, int64_t end) {
    word_.store(Pack(begin, end), std::memory_order_relaxed);
  }
  int64_t TakeFront() { return Take(true); }  // -1 when empty
  int64_t TakeBack() { return Take(false); }  // -1 when empty

 private:
  static uint64_t Pack(int64_t begin, int64_t end) {
    return (static_cast<uint64_t>(end) << 32) | static_cast<uint64_t>(begin);
  }
  int64_t Take(bool front) {
    uint64_t w = word_.load(std::memory_order_relaxed);
    for (;;) {
      const auto begin = static_cast<int64_t>(w & 0xFFFFFFFFu);
      const auto end = static_cast<int64_t>(w >> 32);
      if (begin >= end) return -1;
      const uint64_t next = front ? Pack(begin + 1, end) : Pack(begin, end - 1);
      // Relaxed suffices: the items' data are published by the parallel
      // region's fork and join, not by this word.
      if (word_.compare_exchange_weak(w, next, std::memory_order_relaxed)) {
        return front ? begin : end - 1;
      }
    }
  }
  alignas(64) std::atomic<uint64_t> word_{0};  // a cache line per share
};

}  // namespace

void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (n > 0xFFFFFFFFll)
    throw Error(ErrorKind::kInternal, "work_steal::ParallelFor: too many items");
  const int64_t threads =
      at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, i + 1 < n ? i + 1 : -1);
    return;
  }
  std::vector<Share> shares(static_cast<size_t>(threads));
  for (int64_t t = 0; t < threads; ++t) shares[t].Reset(n * t / threads, n * (t + 1) / threads);
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t own_end = n * (t + 1) / threads;
      for (int64_t i = shares[t].TakeFront(); i >= 0; i = shares[t].TakeFront()) {
        fn(i, i + 1 < own_end ? i + 1 : -1);
      }
      for (int64_t k = 1; k < threads; ++k) {
        Share& other = shares[(t + k) % threads];
        for (int64_t i = other.TakeBack(); i >= 0; i = other.TakeBack()) fn(i, i - 1);
      }
    }
  });
}

}  // namespace gritserve::work_steal
