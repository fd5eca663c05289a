// A safetensors file (8-byte header length, JSON header, data) through
// SafeTensorsFile::Open, from an in-memory file. Every view it accepts must lie
// inside the file and match its dtype and shape.
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "gritserve/common/error.h"
#include "gritserve/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using gritserve::fuzz::Check;
  const int fd = memfd_create("safetensors", 0);
  Check(fd >= 0, "memfd_create");
  Check(write(fd, data, size) == static_cast<ssize_t>(size), "write the input");
  try {
    auto file = gritserve::SafeTensorsFile::Open("/proc/self/fd/" + std::to_string(fd));
    size_t total = 0;
    for (const auto& [name, view] : file->tensors()) {
      Check(view.nbytes == static_cast<size_t>(view.numel()) * gritserve::DTypeSize(view.dtype),
            "a view's size is its shape's");
      Check(view.nbytes <= size, "a view fits in the file");
      total += view.nbytes;
      // Touch every byte: a view past the mapping faults.
      const auto* p = static_cast<const volatile uint8_t*>(view.data);
      uint8_t sum = 0;
      for (size_t i = 0; i < view.nbytes; ++i) sum = static_cast<uint8_t>(sum + p[i]);
      (void)sum;
    }
    Check(total <= size, "views fit in the file together");
  } catch (const gritserve::Error&) {
  }
  close(fd);
  return 0;
}
