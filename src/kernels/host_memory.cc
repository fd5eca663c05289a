#include "gritserve/kernels/host_memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gritserve/kernels/dispatch.h"

namespace gritserve {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kPage = 4096;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

void Unmap(void* p, size_t len) {
  if (len > 0) ::munmap(p, len);
}

}  // namespace

bool HugePagesWanted() {
  static const bool wanted = kernels::Dispatch::Current().huge_pages;
  return wanted;
}

at::Tensor StreamedWeightEmpty(at::IntArrayRef shape, at::ScalarType dtype) {
  const at::TensorOptions options = at::TensorOptions().dtype(dtype);
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t bytes = static_cast<size_t>(numel) * at::elementSize(dtype);
  if (bytes < kHugePage || !HugePagesWanted()) return at::empty(shape, options);
  // Over-map by one huge page, then give back the unaligned head and the tail,
  // so the tensor starts on a 2 MiB boundary and owns exactly its own pages.
  const size_t len = RoundUp(bytes, kPage);
  const size_t span = len + kHugePage;
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return at::empty(shape, options);
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = RoundUp(base, kHugePage);
  Unmap(raw, start - base);
  Unmap(reinterpret_cast<void*>(start + len), base + span - (start + len));
  void* data = reinterpret_cast<void*>(start);
  // Advice only: a kernel without THP leaves ordinary pages, still correct.
  (void)::madvise(data, len, MADV_HUGEPAGE);
  return at::from_blob(
      data, shape, [len](void* p) { ::munmap(p, len); }, options);
}

at::Tensor StreamedWeightCopy(const at::Tensor& src, at::ScalarType dtype) {
  at::Tensor dst = StreamedWeightEmpty(src.sizes(), dtype);
  dst.copy_(src);
  return dst;
}

}  // namespace gritserve
