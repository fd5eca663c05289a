#include "onednn.h"

#include "gritserve/kernels/dispatch.h"

#ifdef GRITSERVE_HAVE_DNNL
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>

namespace gritserve::onednn {
namespace {

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& k) const {
    size_t h = 0;
    for (int64_t v : k) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

class PrimitiveCache {
 public:
  Matmul Get(const std::vector<int64_t>& key, const std::function<dnnl::matmul::desc()>& make) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second.second);
        return it->second.first;
      }
    }
    // Outside the lock: other shapes need not wait.
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc pd(make(), attr, CpuEngine());
    const Matmul prim{dnnl::matmul(pd), pd.scratchpad_desc().get_size()};
    std::lock_guard<std::mutex> lock(mu_);
    if (map_.count(key) == 0) {
      if (map_.size() >= kCapacity) {
        map_.erase(lru_.back());
        lru_.pop_back();
      }
      lru_.push_front(key);
      map_.emplace(key, std::make_pair(prim, lru_.begin()));
    }
    return prim;
  }

 private:
  static constexpr size_t kCapacity = 2048;
  std::mutex mu_;
  std::list<std::vector<int64_t>> lru_;
  std::unordered_map<std::vector<int64_t>,
                     std::pair<Matmul, std::list<std::vector<int64_t>>::iterator>, KeyHash>
      map_;
};

}  // namespace

namespace {

// With the AVX-512 paths switched off (GRITSERVE_CPU_ISA=avx2, to test and
// time the AVX2 siblings on an AVX-512 machine), oneDNN must not keep its
// own AVX-512 kernels either. oneDNN takes the cap only before its first
// primitive, so the first engine decides for the process.
dnnl::engine MakeCpuEngine() {
  if (kernels::Dispatch::Current().isa != kernels::Isa::kAvx512 && kernels::CpuHasAvx512()) {
    try {
      dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx2);
    } catch (const dnnl::error&) {
      // oneDNN was used already (through LibTorch): it keeps what it chose.
    }
  }
  return dnnl::engine(dnnl::engine::kind::cpu, 0);
}

}  // namespace

dnnl::engine& CpuEngine() {
  static dnnl::engine engine = MakeCpuEngine();
  return engine;
}

std::string EffectiveIsa() {
  CpuEngine();  // the cap, if any, is set with the first engine
  using dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case cpu_isa::sse41:
      return "sse41";
    case cpu_isa::avx:
      return "avx";
    case cpu_isa::avx2:
      return "avx2";
    case cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case cpu_isa::avx512_core:
      return "avx512_core";
    case cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "other";
  }
}

Matmul CachedMatmul(const std::vector<int64_t>& key,
                    const std::function<dnnl::matmul::desc()>& make) {
  static PrimitiveCache cache;
  return cache.Get(key, make);
}

void Execute(const Matmul& matmul, std::unordered_map<int, dnnl::memory> args) {
  // oneDNN runs on OpenMP in the calling thread; give it LibTorch's thread count.
  at::internal::lazy_init_num_threads();
  // A CPU stream carries no state between calls; one per thread saves
  // creating one for every layer of every token. The scratchpad is per thread
  // too, grown to the largest any primitive here has asked for.
  thread_local dnnl::stream stream(CpuEngine());
  thread_local at::Tensor scratchpad;
  if (matmul.scratchpad_bytes > 0) {
    const auto bytes = static_cast<int64_t>(matmul.scratchpad_bytes);
    if (!scratchpad.defined() || scratchpad.numel() < bytes) {
      scratchpad = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
    }
    const dnnl::memory::desc md({bytes}, dnnl::memory::data_type::u8, dnnl::memory::format_tag::a);
    args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(md, CpuEngine(), scratchpad.data_ptr()));
  }
  matmul.prim.execute(stream, args);
  stream.wait();
}

bool BatchedMatmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  using Dt = dnnl::memory::data_type;
  if (a.dim() != 4 || b.dim() != 4 || !a.device().is_cpu() || a.scalar_type() != at::kFloat ||
      b.scalar_type() != at::kFloat || a.size(0) != b.size(0) || a.size(1) != b.size(1) ||
      a.size(3) != b.size(2) || a.numel() == 0 || b.numel() == 0) {
    return false;
  }
  const int64_t n0 = a.size(0), n1 = a.size(1), m = a.size(2), k = a.size(3), p = b.size(3);
  const dnnl::memory::dims a_st(a.strides().begin(), a.strides().end());
  const dnnl::memory::dims b_st(b.strides().begin(), b.strides().end());
  const dnnl::memory::desc a_md({n0, n1, m, k}, Dt::f32, a_st);
  const dnnl::memory::desc b_md({n0, n1, k, p}, Dt::f32, b_st);
  const dnnl::memory::desc c_md({n0, n1, m, p}, Dt::f32, {n1 * m * p, m * p, p, 1});
  std::vector<int64_t> key{1, n0, n1, m, k, p};
  key.insert(key.end(), a_st.begin(), a_st.end());
  key.insert(key.end(), b_st.begin(), b_st.end());
  const Matmul prim = CachedMatmul(key, [&] { return dnnl::matmul::desc(a_md, b_md, c_md); });
  out = at::empty({n0, n1, m, p}, a.options());
  dnnl::engine& e = CpuEngine();
  Execute(prim, {{DNNL_ARG_SRC, dnnl::memory(a_md, e, a.data_ptr())},
                 {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, e, b.data_ptr())},
                 {DNNL_ARG_DST, dnnl::memory(c_md, e, out.data_ptr())}});
  return true;
}

}  // namespace gritserve::onednn
#endif  // GRITSERVE_HAVE_DNNL
