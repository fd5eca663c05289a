// Parallel loops whose threads, done with their own share, take what is left
// of the others'.
//
// at::parallel_for splits a range into equal static shares, so a loop ends
// when its slowest thread does. On shared machines one core is often slowed
// for a while (a neighbour on the bus, a host interrupt), and in the
// prompt-sized products of a cached RAG request the other thread then spun
// idle for 6-12% of its time. Here each thread still starts on its own
// contiguous share, walking it forward in memory order (so prefetching and
// streaming behave as with a static split), and a thread that runs out takes
// single items from the back of another's share.
#pragma once

#include <cstdint>
#include <functional>

namespace gritserve::work_steal {

// Calls fn(item, next) once for every item in [0, n), over LibTorch's
// intra-op threads (on the caller alone inside a parallel region). `next` is
// the item this thread is likely to take after `item` (item + 1 in its own
// share, item - 1 when taking from another's back, -1 when none is likely),
// for callers that prefetch. Items must be independent; n must fit in 32 bits.
// Implemented in a file compiled with OpenMP, as at::parallel_for runs in
// parallel only there.
void ParallelFor(int64_t n, const std::function<void(int64_t item, int64_t next)>& fn);

}  // namespace gritserve::work_steal
