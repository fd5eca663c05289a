#include "gritserve/kernels/linear.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gritserve/common/error.h"
#include "gritserve/kernels/cpu_kernels.h"
#include "gritserve/kernels/dispatch.h"
#include "gritserve/kernels/host_memory.h"
#include "gritserve/kernels/small_gemm.h"
#include "onednn.h"

namespace gritserve {

#ifdef GRITSERVE_HAVE_DNNL
namespace {

using Tag = dnnl::memory::format_tag;
using Dt = dnnl::memory::data_type;
using onednn::CpuEngine;

// The row count the packed layout is chosen for. brgemm reads the same blocked
// layout for any row count (checked for 1..1024 rows), so one packed copy of
// the weights serves decode steps, prompts and embedding batches alike.
constexpr int64_t kLayoutRows = 128;

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
  // float32 in the BA16a64b layout small_gemm reads (oneDNN's choice on AVX-512).
  bool small_gemm = false;
};

namespace {

// weight: [out, in] or [in, out] contiguous CPU, float32 (or bfloat16 when packing to it).
std::shared_ptr<const Linear::Packed> MakePacked(const at::Tensor& weight, Linear::Layout layout,
                                                 int64_t in, int64_t out, bool pack, bool bf16) {
  auto p = std::make_shared<Linear::Packed>();
  // oneDNN's weights are [K, N] = [in, out]; the HF layout is that matrix transposed ("ba").
  const dnnl::memory::desc plain({in, out},
                                 weight.scalar_type() == at::kBFloat16 ? Dt::bf16 : Dt::f32,
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
  p->storage = StreamedWeightEmpty({static_cast<int64_t>(p->weights.get_size())}, at::kByte);
  p->blocked = true;
  p->bf16 = bf16;
  p->small_gemm = !bf16 && small_gemm::Available() &&
                  kernels::Dispatch::Current().gemm != kernels::Gemm::kOneDnn &&
                  p->weights == dnnl::memory::desc({in, out}, Dt::f32, Tag::BA16a64b);
  // The reorder also converts float32 to bfloat16 when asked.
  dnnl::memory src(plain, CpuEngine(), weight.data_ptr());
  dnnl::memory dst(p->weights, CpuEngine(), p->storage.data_ptr());
  dnnl::stream stream(CpuEngine());
  dnnl::reorder(src, dst).execute(stream, src, dst);
  stream.wait();
  return p;
}

// out = a W^T + bias for a quantized W in native bfloat16 products: W a chunk
// of rows at a time dequantized to bfloat16 ([nc, in]: oneDNN's [in, nc] in
// "ba" order), a rounded to bfloat16 once, and oneDNN's bfloat16 matmul
// writing each chunk's columns of out in place (float32 accumulation).
//   a: [m, in] float32 contiguous; bias: [out] float32 or undefined; out: [m, out]
void QuantizedBf16Product(const quant::Matrix& w, const at::Tensor& a, const at::Tensor& bias,
                          kernels::Isa isa, at::Tensor& out) {
  const int64_t m = a.size(0), in = w.cols(), n = w.rows();
  const int64_t chunk = std::min(n, quant::ChunkRows(w));  // the float panels' chunk
  thread_local std::vector<uint16_t> wb;  // [chunk, in] bfloat16, kept between calls
  wb.resize(static_cast<size_t>(chunk * in));
  const at::Tensor src = a.to(at::kBFloat16);  // [m, in]
  const dnnl::memory::desc src_md({m, in}, Dt::bf16, Tag::ab);
  dnnl::engine& engine = CpuEngine();
  for (int64_t n0 = 0; n0 < n; n0 += chunk) {
    const int64_t nc = std::min(chunk, n - n0);
    quant::DequantizeBf16Rows(w, n0, nc, wb.data(), isa);
    const dnnl::memory::desc w_md({in, nc}, Dt::bf16, Tag::ba);
    const dnnl::memory::desc dst_md({m, nc}, Dt::f32, dnnl::memory::dims{n, 1});
    const dnnl::memory::desc bias_md({1, nc}, Dt::f32, Tag::ab);
    const bool has_bias = bias.defined();
    const onednn::Matmul prim = onednn::CachedMatmul({2, m, in, nc, n, has_bias}, [&] {
      return has_bias ? dnnl::matmul::desc(src_md, w_md, bias_md, dst_md)
                      : dnnl::matmul::desc(src_md, w_md, dst_md);
    });
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(src_md, engine, src.data_ptr())},
        {DNNL_ARG_WEIGHTS, dnnl::memory(w_md, engine, wb.data())},
        {DNNL_ARG_DST, dnnl::memory(dst_md, engine, out.data_ptr<float>() + n0)}};
    if (has_bias) {
      args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_md, engine, bias.data_ptr<float>() + n0));
    }
    onednn::Execute(prim, std::move(args));
  }
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
  if (pack && packed_dtype == at::kFloat && in_ > 0 && out_ > 0 && weight.is_cpu() &&
      Bfloat16PanelsAvailable() &&
      (weight.scalar_type() == at::kBFloat16 || cpu_kernels::HoldsBfloat16Values(weight))) {
    weight = weight.contiguous();
    panel_isa_ = small_gemm::Bf16PanelIsa();
    bf16_panels_ = StreamedWeightEmpty({small_gemm::Bf16PanelElements(in_, out_)}, at::kBFloat16);
    auto* dst = static_cast<uint16_t*>(bf16_panels_.data_ptr());
    if (weight.scalar_type() == at::kBFloat16) {
      small_gemm::PackBf16(static_cast<const uint16_t*>(weight.data_ptr()),
                           layout == Layout::kOutIn, in_, out_, dst);
    } else {
      small_gemm::PackBf16(weight.data_ptr<float>(), layout == Layout::kOutIn, in_, out_, dst);
    }
    // The panel kernel adds a float32 bias, whatever the model's dtype (a
    // bfloat16 model's rows are widened for it in operator()).
    if (bias_.defined()) bias_ = bias_.to(at::kFloat).contiguous();
    return;  // the source matrix is released with `weight`
  }
  // bfloat16 weights for float32 products where the panels do not run: widened once.
  if (packed_dtype == at::kFloat && weight.scalar_type() == at::kBFloat16 && weight.is_cpu()) {
    weight = weight.to(at::kFloat);
  }
  // One row against a plain [out, in] float32 matrix (the tied LM head at
  // decode and time to first token): a GEMV that streams it once at memory
  // bandwidth, the same in every build (measured: on par with oneDNN's matmul
  // on this layout, ~15% faster than OpenBLAS's sgemv).
  if (!pack && layout == Layout::kOutIn && cpu_kernels::Applies(weight) && weight.is_contiguous() &&
      kernels::Dispatch::Current().fused) {
    gemv_weight_ = weight;
  }
  const bool bf16 = packed_dtype == at::kBFloat16;
  const bool source_ok =
      weight.scalar_type() == at::kFloat || (bf16 && weight.scalar_type() == at::kBFloat16);
  if (packed_dtype != at::kFloat &&
      !(bf16 && pack && CpuBf16Available() && weight.device().is_cpu() && source_ok)) {
    throw Error(ErrorKind::kInternal,
                "bfloat16 packing needs CPU float32 or bfloat16 weights and oneDNN");
  }
#ifdef GRITSERVE_HAVE_DNNL
  if (weight.device().is_cpu() && source_ok && CpuOneDnn()) {
    weight = weight.contiguous();
    packed_ = MakePacked(weight, layout, in_, out_, pack, bf16);
    // The packed products read a float32 bias, whatever the model's dtype.
    if (bias_.defined()) bias_ = bias_.to(at::kFloat).contiguous();
    return;  // packed_->storage holds whatever must stay alive
  }
#endif
  // sgemm without a transposed operand is ~8% faster for prompt-sized inputs,
  // and gemv through the transposed view streams the same memory.
  if (pack && layout == Layout::kOutIn) {
    weight_ = weight.is_cpu() ? StreamedWeightCopy(weight.t(), weight.scalar_type())
                              : weight.t().contiguous();
    layout_ = Layout::kInOut;
  } else {
    weight_ = std::move(weight);
  }
}

Linear::Linear(const at::Tensor& weight, at::Tensor bias, quant::Format format, bool bf16_products)
    : bias_(std::move(bias)) {
  if (weight.dim() != 2 || !weight.device().is_cpu() ||
      (weight.scalar_type() != at::kFloat && weight.scalar_type() != at::kBFloat16)) {
    throw Error(ErrorKind::kInternal, "quantized layers take 2-D CPU float32 or bfloat16 weights");
  }
  out_ = weight.size(0);
  in_ = weight.size(1);
  const at::Tensor w = weight.contiguous();
  quant_ = std::make_shared<const quant::Matrix>(
      w.scalar_type() == at::kBFloat16
          ? quant::Matrix::QuantizeBf16(static_cast<const uint16_t*>(w.data_ptr()), out_, in_,
                                        format)
          : quant::Matrix::Quantize(w.data_ptr<float>(), out_, in_, format));
  quant_isa_ = quant::DispatchedIsa();
  quant_bf16_products_ = bf16_products && CpuBf16Available();
  if (bias_.defined()) bias_ = bias_.to(at::kFloat).contiguous();
}

at::Tensor Linear::operator()(const at::Tensor& x) const {
  if (quant_ != nullptr) {
    if (!x.is_cpu()) throw Error(ErrorKind::kInternal, "quantized layer given a non-CPU input");
    const at::Tensor a = x.to(at::kFloat).contiguous();  // [N, in]
    const int64_t m = a.size(0);
    at::Tensor out = at::empty({m, out_}, a.options());  // [N, out]
#ifdef GRITSERVE_HAVE_DNNL
    if (quant_bf16_products_ && m > 0 && quant::PathFor(m) == quant::Path::kFloatPanels) {
      QuantizedBf16Product(*quant_, a, bias_, quant_isa_, out);
      return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
    }
#endif
    quant::Multiply(*quant_, a.data_ptr<float>(), m,
                    bias_.defined() ? bias_.data_ptr<float>() : nullptr, out.data_ptr<float>(),
                    quant_isa_);
    return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
  }
  // The packed products take and give float32 (a bfloat16 primitive narrows
  // its own source). A bfloat16 model on a CPU without fast bfloat16 products
  // reaches them with bfloat16 rows: widened here, and back after.
  if ((bf16_panels_.defined() || packed_ != nullptr) && x.is_cpu() &&
      x.scalar_type() != at::kFloat) {
    return (*this)(x.to(at::kFloat)).to(x.scalar_type());
  }
  if (bf16_panels_.defined()) {
    if (!cpu_kernels::Applies(x)) {
      throw Error(ErrorKind::kInternal,
                  "bfloat16-panel layer given a non-float32 or non-CPU input");
    }
    const int64_t m = x.size(0);
    at::Tensor out = at::empty({m, out_}, x.options());  // [N, out]
    if (m == 0) return out;
    const at::Tensor a = x.contiguous();
    small_gemm::RunBf16(
        a.data_ptr<float>(), m, in_, static_cast<const uint16_t*>(bf16_panels_.data_ptr()), out_,
        bias_.defined() ? bias_.data_ptr<float>() : nullptr, out.data_ptr<float>(), panel_isa_);
    return out;
  }
  if (gemv_weight_.defined() && x.size(0) == 1 && cpu_kernels::Applies(x)) {
    at::Tensor y = cpu_kernels::Gemv(gemv_weight_, x.reshape({in_}).contiguous());  // [out]
    if (bias_.defined()) y.add_(bias_);
    return y.unsqueeze(0);  // [1, out]
  }
#ifdef GRITSERVE_HAVE_DNNL
  if (packed_ != nullptr) {
    const int64_t m = x.size(0);
    at::Tensor out = at::empty({m, out_}, x.options());  // [N, out]
    if (m == 0) return out;
    if (packed_->small_gemm && small_gemm::Suits(m)) {
      const at::Tensor a = x.contiguous();
      small_gemm::Run(a.data_ptr<float>(), m, in_,
                      static_cast<const float*>(packed_->storage.data_ptr()), out_,
                      bias_.defined() ? bias_.data_ptr<float>() : nullptr, out.data_ptr<float>());
      return out;
    }
    at::Tensor src = packed_->bf16 ? x.to(at::kBFloat16).contiguous() : x.contiguous();
    const bool bias = bias_.defined(), bf16 = packed_->bf16;
    const Dt src_dt = bf16 ? Dt::bf16 : Dt::f32;
    const dnnl::memory::desc src_md({m, in_}, src_dt, Tag::ab);
    const dnnl::memory::desc dst_md({m, out_}, Dt::f32, Tag::ab);
    const dnnl::memory::desc bias_md({1, out_}, Dt::f32, Tag::ab);
    // One primitive per (rows, shape, bias, layout, precision), shared by every
    // layer of that shape.
    const onednn::Matmul prim =
        onednn::CachedMatmul({0, m, in_, out_, bias, packed_->blocked, bf16}, [&] {
          return bias ? dnnl::matmul::desc(src_md, packed_->weights, bias_md, dst_md)
                      : dnnl::matmul::desc(src_md, packed_->weights, dst_md);
        });
    dnnl::engine& engine = CpuEngine();
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(src_md, engine, src.data_ptr())},
        {DNNL_ARG_WEIGHTS, dnnl::memory(packed_->weights, engine, packed_->storage.data_ptr())},
        {DNNL_ARG_DST, dnnl::memory(dst_md, engine, out.data_ptr())}};
    if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_md, engine, bias_.data_ptr()));
    onednn::Execute(prim, std::move(args));
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

bool Linear::Bfloat16PanelsAvailable() {
  return small_gemm::Bf16PanelIsa() != kernels::Isa::kBaseline &&
         kernels::Dispatch::Current().fused &&
         kernels::Dispatch::Current().gemm == kernels::Gemm::kAuto;
}

bool Linear::CpuOneDnn() {
#ifdef GRITSERVE_HAVE_DNNL
  return kernels::Dispatch::Current().gemm != kernels::Gemm::kBlas && OneDnnFast();
#else
  return false;
#endif
}

bool Linear::CpuBf16Available() {
#ifdef GRITSERVE_HAVE_DNNL
  return kernels::Dispatch::Current().gemm != kernels::Gemm::kBlas && OneDnnBf16Fast();
#else
  return false;
#endif
}

std::string Linear::CpuBackend() {
#ifdef GRITSERVE_HAVE_DNNL
  if (kernels::Dispatch::Current().gemm == kernels::Gemm::kBlas)
    return "LibTorch BLAS (GRITSERVE_CPU_GEMM=blas)";
  if (OneDnnFast() && small_gemm::Available() &&
      kernels::Dispatch::Current().gemm != kernels::Gemm::kOneDnn) {
    return "oneDNN brgemm (ISA " + onednn::EffectiveIsa() +
           "), weights packed at load; 24-64 rows on the prefetching AVX-512 kernel";
  }
  if (OneDnnFast())
    return "oneDNN brgemm (ISA " + onednn::EffectiveIsa() + "), weights packed at load";
  return "LibTorch BLAS (oneDNN has no fast kernels for this CPU)";
#else
  return "LibTorch BLAS (built without oneDNN)";
#endif
}

}  // namespace gritserve
