#pragma once

#include <cstdint>

namespace gritserve {

// Keeps freed memory in the process instead of handing it back to the OS.
// glibc serves every allocation over 32 MB with a fresh mmap and unmaps it on
// free, so each large activation of a forward pass page-faults its whole size
// again (measured: embedding 8 x 128 tokens on the 0.5B shape runs 1.8x faster
// with this). Process-wide, so only executables call it, before any threads.
void ConfigureAllocatorForInference();

// Hands the free memory the allocator holds back to the OS (glibc
// malloc_trim), as ConfigureAllocatorForInference otherwise keeps it: for
// after an unusually large job (a long input, a big batch), so that its peak
// does not stay the process's size. Costs a walk over the heap and, for the
// next large job, fresh page faults; callers use it after large work only.
// Thread-safe. Returns the bytes the heap's free lists held before.
int64_t ReleaseFreedMemory();

// Bytes freed inside the process's heap and not yet handed back: memory the
// next allocations reuse, which the OS counts as used.
int64_t FreeHeapBytes();

}  // namespace gritserve
