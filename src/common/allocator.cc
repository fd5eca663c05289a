#include "gritserve/common/allocator.h"

#include <malloc.h>

namespace gritserve {

void ConfigureAllocatorForInference() {
  mallopt(M_MMAP_MAX, 0);              // large blocks come from the heap and are reused
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // and are not trimmed back after each pass
  mallopt(M_TOP_PAD, 64 << 20);        // grow the heap in big steps
}

int64_t FreeHeapBytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.fordblks);
}

int64_t ReleaseFreedMemory() {
  const int64_t free_bytes = FreeHeapBytes();
  malloc_trim(0);
  return free_bytes;
}

}  // namespace gritserve
