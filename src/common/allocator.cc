#include "gritserve/common/allocator.h"

#include <malloc.h>

namespace gritserve {

void ConfigureAllocatorForInference() {
  mallopt(M_MMAP_MAX, 0);              // large blocks come from the heap and are reused
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // and are not trimmed back after each pass
  mallopt(M_TOP_PAD, 64 << 20);        // grow the heap in big steps
}

}  // namespace gritserve
