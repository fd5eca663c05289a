// CPU memory for weights that every token streams.
#pragma once

#include <ATen/ATen.h>

namespace gritserve {

// An uninitialised contiguous CPU tensor. At 2 MiB and above its memory is a
// fresh mapping aligned to 2 MiB and advised for transparent huge pages: the
// hardware prefetchers stop at every 4 KiB page boundary, so a weight matrix
// streamed from DRAM on 4 KiB pages loses a prefetch ramp every 64 cache
// lines (and a TLB walk). Measured on the 2-core CI-class machine, oneDNN
// products reading 35 MB of packed weights: 1 row 1.39x faster, 8 rows 1.29x,
// 32 rows 1.08x, 256 rows 1.04x. Where the kernel does not grant huge pages
// (THP "never"), the memory is still ordinary and correct. Smaller tensors,
// and GRITSERVE_HUGE_PAGES=0 (for side-by-side comparisons), take LibTorch's
// allocator.
at::Tensor StreamedWeightEmpty(at::IntArrayRef shape, at::ScalarType dtype);

// StreamedWeightEmpty holding a copy of `src` (converted to `dtype`). CPU only.
at::Tensor StreamedWeightCopy(const at::Tensor& src, at::ScalarType dtype);

// Whether StreamedWeightEmpty maps huge-page-advised memory (reads
// GRITSERVE_HUGE_PAGES once).
bool HugePagesWanted();

}  // namespace gritserve
