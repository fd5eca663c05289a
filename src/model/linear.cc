#include "gritserve/model/linear.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "gritserve/common/error.h"

#ifdef GRITSERVE_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace gritserve {

#ifdef GRITSERVE_HAVE_DNNL
namespace {

// GRITSERVE_CPU_GEMM=blas forces LibTorch's BLAS path even where oneDNN is
// available: for side-by-side benchmarks and as an escape hatch.
bool OneDnnWanted() {
  const char* v = std::getenv("GRITSERVE_CPU_GEMM");
  return v == nullptr || std::strcmp(v, "blas") != 0;
}

using Tag = dnnl::memory::format_tag;
using Dt = dnnl::memory::data_type;
using Dims = dnnl::memory::dims;

dnnl::engine& CpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The row count the packed layout is chosen for. brgemm reads the same blocked
// layout for any row count (checked for 1..1024 rows), so one packed copy of
// the weights serves decode steps, prompts and embedding batches alike.
constexpr int64_t kLayoutRows = 128;

// oneDNN fixes the row count when a primitive is created, and creating one
// costs 0.5-1 ms (an implementation search), so primitives are cached per
// (rows, in, out, bias, packed) across all layers of one shape. Bounded, LRU:
// embedding batches bring many distinct row counts.
class PrimitiveCache {
 public:
  // rows, in, out, bias, packed, bfloat16
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool>;

  dnnl::matmul Get(const Key& key, const dnnl::memory::desc& weights) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
    const auto [m, k, n, has_bias, packed, bf16] = key;
    (void)packed;
    dnnl::memory::desc src({m, k}, bf16 ? Dt::bf16 : Dt::f32, Tag::ab);
    dnnl::memory::desc dst({m, n}, Dt::f32, Tag::ab);
    dnnl::matmul::primitive_desc pd =
        has_bias ? dnnl::matmul::primitive_desc(
                       dnnl::matmul::desc(src, weights,
                                          dnnl::memory::desc({1, n}, Dt::f32, Tag::ab), dst),
                       CpuEngine())
                 : dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), CpuEngine());
    dnnl::matmul prim(pd);
    if (map_.size() >= kCapacity) {
      map_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(key);
    map_.emplace(key, std::make_pair(prim, lru_.begin()));
    return prim;
  }

 private:
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = std::hash<int64_t>()(std::get<0>(k));
      h = h * 31 + std::hash<int64_t>()(std::get<1>(k));
      h = h * 31 + std::hash<int64_t>()(std::get<2>(k));
      return h * 8 + (std::get<3>(k) ? 4 : 0) + (std::get<4>(k) ? 2 : 0) + (std::get<5>(k) ? 1 : 0);
    }
  };
  static constexpr size_t kCapacity = 2048;
  std::mutex mu_;
  std::list<Key> lru_;
  std::unordered_map<Key, std::pair<dnnl::matmul, std::list<Key>::iterator>, KeyHash> map_;
};

PrimitiveCache& Primitives() {
  static PrimitiveCache cache;
  return cache;
}

// Blocked layouts need an ISA oneDNN has JIT kernels for; on anything older it
// would fall back to reference loops, far slower than BLAS.
bool HasFastKernel(Dt dt) {
  try {
    dnnl::memory::desc w({kLayoutRows, kLayoutRows}, dt, Tag::any);
    dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(dnnl::memory::desc({kLayoutRows, kLayoutRows}, dt, Tag::ab), w,
                           dnnl::memory::desc({kLayoutRows, kLayoutRows}, Dt::f32, Tag::ab)),
        CpuEngine());
    return std::string(pd.impl_info_str()).rfind("ref", 0) != 0;
  } catch (const std::exception&) {
    return false;
  }
}

bool OneDnnFast() {
  static const bool fast = HasFastKernel(Dt::f32);
  return fast;
}

bool OneDnnBf16Fast() {
  static const bool fast = OneDnnFast() && HasFastKernel(Dt::bf16);
  return fast;
}

}  // namespace

struct Linear::Packed {
  dnnl::memory::desc weights;  // [in, out] as oneDNN sees it (blocked, or a plain view)
  at::Tensor storage;          // owns (or shares) the bytes `weights` describes
  bool blocked = false;
  bool bf16 = false;  // weights (and so inputs) in bfloat16
};

namespace {

// weight: [out, in] or [in, out] float32 contiguous CPU.
std::shared_ptr<const Linear::Packed> MakePacked(const at::Tensor& weight, Linear::Layout layout,
                                                 int64_t in, int64_t out, bool pack, bool bf16) {
  auto p = std::make_shared<Linear::Packed>();
  // oneDNN's weights are [K, N] = [in, out]; the HF layout is that matrix transposed ("ba").
  const dnnl::memory::desc plain({in, out}, Dt::f32,
                                 layout == Linear::Layout::kOutIn ? Tag::ba : Tag::ab);
  if (!pack) {
    p->weights = plain;
    p->storage = weight;
    return p;
  }
  const Dt wdt = bf16 ? Dt::bf16 : Dt::f32;
  dnnl::matmul::primitive_desc pd(
      dnnl::matmul::desc(dnnl::memory::desc({kLayoutRows, in}, wdt, Tag::ab),
                         dnnl::memory::desc({in, out}, wdt, Tag::any),
                         dnnl::memory::desc({kLayoutRows, out}, Dt::f32, Tag::ab)),
      CpuEngine());
  p->weights = pd.weights_desc();
  p->storage = at::empty({static_cast<int64_t>(p->weights.get_size())},
                         at::TensorOptions().dtype(at::kByte));
  p->blocked = true;
  p->bf16 = bf16;
  // The reorder also converts float32 to bfloat16 when asked.
  dnnl::memory src(plain, CpuEngine(), weight.data_ptr());
  dnnl::memory dst(p->weights, CpuEngine(), p->storage.data_ptr());
  dnnl::stream stream(CpuEngine());
  dnnl::reorder(src, dst).execute(stream, src, dst);
  stream.wait();
  return p;
}

}  // namespace
#else
struct Linear::Packed {};
#endif  // GRITSERVE_HAVE_DNNL

Linear::Linear(at::Tensor weight, Layout layout, at::Tensor bias, bool pack,
               at::ScalarType packed_dtype)
    : layout_(layout), bias_(std::move(bias)) {
  if (weight.dim() != 2) throw Error(ErrorKind::kInternal, "linear weight must be 2-D");
  out_ = layout == Layout::kOutIn ? weight.size(0) : weight.size(1);
  in_ = layout == Layout::kOutIn ? weight.size(1) : weight.size(0);
  if (bias_.defined()) bias_ = bias_.contiguous();
  const bool bf16 = packed_dtype == at::kBFloat16;
  if (packed_dtype != at::kFloat &&
      !(bf16 && pack && CpuBf16Available() && weight.device().is_cpu() &&
        weight.scalar_type() == at::kFloat)) {
    throw Error(ErrorKind::kInternal, "bfloat16 packing needs CPU float32 weights and oneDNN");
  }
#ifdef GRITSERVE_HAVE_DNNL
  if (weight.device().is_cpu() && weight.scalar_type() == at::kFloat && OneDnnWanted() &&
      OneDnnFast()) {
    weight = weight.contiguous();
    packed_ = MakePacked(weight, layout, in_, out_, pack, bf16);
    return;  // packed_->storage holds whatever must stay alive
  }
#endif
  // sgemm without a transposed operand is ~8% faster for prompt-sized inputs,
  // and gemv through the transposed view streams the same memory.
  if (pack && layout == Layout::kOutIn) {
    weight_ = weight.t().contiguous();
    layout_ = Layout::kInOut;
  } else {
    weight_ = std::move(weight);
  }
}

at::Tensor Linear::operator()(const at::Tensor& x) const {
#ifdef GRITSERVE_HAVE_DNNL
  if (packed_ != nullptr) {
    const int64_t m = x.size(0);
    at::Tensor out = at::empty({m, out_}, x.options());  // [N, out]
    if (m == 0) return out;
    at::Tensor src = packed_->bf16 ? x.to(at::kBFloat16).contiguous() : x.contiguous();
    // oneDNN runs on OpenMP in the calling thread; give it LibTorch's thread count.
    at::internal::lazy_init_num_threads();
    dnnl::matmul prim = Primitives().Get(
        {m, in_, out_, bias_.defined(), packed_->blocked, packed_->bf16}, packed_->weights);
    dnnl::engine& engine = CpuEngine();
    dnnl::memory src_m(dnnl::memory::desc({m, in_}, packed_->bf16 ? Dt::bf16 : Dt::f32, Tag::ab),
                       engine, src.data_ptr());
    dnnl::memory w_m(packed_->weights, engine, packed_->storage.data_ptr());
    dnnl::memory dst_m(dnnl::memory::desc({m, out_}, Dt::f32, Tag::ab), engine, out.data_ptr());
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, dst_m}};
    if (bias_.defined()) {
      args.emplace(DNNL_ARG_BIAS, dnnl::memory(dnnl::memory::desc({1, out_}, Dt::f32, Tag::ab),
                                               engine, bias_.data_ptr()));
    }
    dnnl::stream stream(engine);
    prim.execute(stream, args);
    stream.wait();
    return out;
  }
#endif
  // [in, out] or the transposed view of [out, in]
  const at::Tensor w = layout_ == Layout::kInOut ? weight_ : weight_.t();
  if (x.size(0) == 1) {
    // gemv streams the weight matrix once; for one row it is much faster than gemm.
    at::Tensor row = x.select(0, 0);
    return (bias_.defined() ? at::addmv(bias_, w.t(), row) : at::mv(w.t(), row)).unsqueeze(0);
  }
  return bias_.defined() ? at::addmm(bias_, x, w) : at::mm(x, w);
}

bool Linear::CpuBf16Available() {
#ifdef GRITSERVE_HAVE_DNNL
  return OneDnnWanted() && OneDnnBf16Fast();
#else
  return false;
#endif
}

std::string Linear::CpuBackend() {
#ifdef GRITSERVE_HAVE_DNNL
  if (!OneDnnWanted()) return "LibTorch BLAS (GRITSERVE_CPU_GEMM=blas)";
  if (OneDnnFast()) return "oneDNN brgemm, weights packed at load";
  return "LibTorch BLAS (oneDNN has no fast kernels for this CPU)";
#else
  return "LibTorch BLAS (built without oneDNN)";
#endif
}

}  // namespace gritserve
