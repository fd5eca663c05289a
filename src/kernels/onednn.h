// oneDNN plumbing shared by the CPU kernels (linear layers, attention). Only
// compiled into builds that found oneDNN (GRITSERVE_HAVE_DNNL).
#pragma once

#ifdef GRITSERVE_HAVE_DNNL
#include <ATen/ATen.h>

#include <functional>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

namespace gritserve::onednn {

dnnl::engine& CpuEngine();

// The widest ISA oneDNN dispatches to in this process ("avx2",
// "avx512_core_bf16", ...): the CPU's, or the cap CpuEngine set.
std::string EffectiveIsa();

// A primitive and the scratchpad it needs. Every primitive here takes its
// scratchpad from the caller (a buffer per thread): oneDNN documents its
// library-managed scratchpad as shared between primitives unless the library
// was built for concurrent execution, which a distribution's build need not
// be. Observed here: attention products run from both OpenMP threads at once
// returned wrong values until the scratchpads were per thread.
struct Matmul {
  dnnl::matmul prim;
  size_t scratchpad_bytes = 0;
};

// oneDNN fixes every shape when a primitive is created, and creating one costs
// 0.5-1 ms (an implementation search), so primitives are kept by a caller-built
// key (kind tag first, then shapes and strides). LRU-bounded: embedding batches
// and prompts bring many distinct sizes.
Matmul CachedMatmul(const std::vector<int64_t>& key,
                    const std::function<dnnl::matmul::desc()>& make);

// Runs a primitive on the calling thread's OpenMP team, sized like LibTorch's
// (alone, inside a parallel region), with a per-thread scratchpad.
void Execute(const Matmul& matmul, std::unordered_map<int, dnnl::memory> args);

// out = a @ b for 4-D float32 CPU tensors of any strides: a [N0, N1, M, K],
// b [N0, N1, K, P] -> out [N0, N1, M, P] contiguous. Returns false (doing
// nothing) for other shapes or types.
bool BatchedMatmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out);

}  // namespace gritserve::onednn
#endif  // GRITSERVE_HAVE_DNNL
