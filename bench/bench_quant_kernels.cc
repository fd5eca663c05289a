// Quantized-weight products against the bfloat16 panels they replace, on the
// Qwen2.5-0.5B layers' shapes (random weights): milliseconds per product by
// row count, for q8 and q4 on both paths (int8 activation rows, float32
// panels) and every kernel family the CPU runs. Prints JSON; not a test.
//   bench_quant_kernels [--threads N] [--repeats N] [--rows 1,2,...]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>
#include <vector>

#include "gritserve/kernels/quant.h"
#include "gritserve/kernels/small_gemm.h"

using namespace gritserve;

namespace {

// The fastest of `repeats` runs of fn, in milliseconds.
template <typename Fn>
double BestMs(int repeats, const Fn& fn) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(
        best,
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve quantized product benchmark"};
  int threads = 0, repeats = 20;
  std::vector<int64_t> rows = {1, 2, 4, 8, 16, 32, 128};
  app.add_option("--threads", threads, "compute threads (0: all cores)");
  app.add_option("--repeats", repeats, "runs per measurement (best is reported)");
  app.add_option("--rows", rows, "activation row counts")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads > 0 ? threads
                                  : static_cast<int>(std::thread::hardware_concurrency()));
  struct Shape {
    const char* name;
    int64_t out, in;
  };
  nlohmann::json out;
  for (const Shape s : {Shape{"qkv_896x1152", 1152, 896}, Shape{"gate_up_896x9728", 9728, 896},
                        Shape{"down_4864x896", 896, 4864}}) {
    at::manual_seed(1);
    const at::Tensor w = (at::randn({s.out, s.in}) * 0.02).to(at::kBFloat16);  // [out, in]
    const auto* bits = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    std::vector<uint16_t> panels;
    if (small_gemm::Bf16PanelIsa() != kernels::Isa::kBaseline) {
      panels.resize(static_cast<size_t>(small_gemm::Bf16PanelElements(s.in, s.out)));
      small_gemm::PackBf16(bits, /*out_in=*/true, s.in, s.out, panels.data());
    }
    const quant::Matrix q8 = quant::Matrix::QuantizeBf16(bits, s.out, s.in, quant::Format::kQ8);
    const quant::Matrix q4 = quant::Matrix::QuantizeBf16(bits, s.out, s.in, quant::Format::kQ4);
    for (int64_t m : rows) {
      const at::Tensor x = at::randn({m, s.in});
      at::Tensor y = at::empty({m, s.out});
      nlohmann::json& o = out[s.name][std::to_string(m) + "_rows"];
      for (kernels::Isa isa : {kernels::Isa::kAvx512, kernels::Isa::kAvx2}) {
        if (panels.empty() || !small_gemm::PanelIsaAvailable(isa)) continue;
        o[std::string("bf16_panels_") + kernels::IsaName(isa) + "_ms"] = BestMs(repeats, [&] {
          small_gemm::RunBf16(x.data_ptr<float>(), m, s.in, panels.data(), s.out, nullptr,
                              y.data_ptr<float>(), isa);
        });
      }
      // AVX2's int8 rows with and without AVX-VNNI where the CPU has it (the
      // float panels do not use it: measured once).
      for (const auto& [family, vnni] :
           {std::pair{quant::Isa::kAvx512, false}, std::pair{quant::Isa::kAvx2, false},
            std::pair{quant::Isa::kAvx2, true}}) {
        const quant::Isa isa = family;  // (a lambda cannot capture a structured binding in C++17)
        if (!quant::IsaAvailable(isa) || (vnni && !kernels::CpuHasAvxVnni())) continue;
        const kernels::ScopedAvxVnni scoped(vnni);
        for (const quant::Matrix* q : {&q8, &q4}) {
          for (quant::Path p : {quant::Path::kInt8Rows, quant::Path::kFloatPanels}) {
            if (vnni && p == quant::Path::kFloatPanels) continue;
            const std::string key =
                std::string(quant::FormatName(q->format())) + "_" +
                (p == quant::Path::kInt8Rows ? quant::Int8RowsName(isa) : kernels::IsaName(isa)) +
                (p == quant::Path::kInt8Rows ? "_int8_rows" : "_float_panels") + "_ms";
            o[key] = BestMs(repeats, [&] {
              quant::Multiply(*q, x.data_ptr<float>(), m, nullptr, y.data_ptr<float>(), isa, p);
            });
          }
        }
      }
    }
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
