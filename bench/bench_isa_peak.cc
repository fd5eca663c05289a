// The multiply-add ceilings of each instruction family this CPU has, one
// core, operands in registers: what a prompt-sized product (compute-bound,
// weights reused from cache) can reach at best on each ISA path, and so how
// close the AVX2 paths can come to the AVX-512 ones on prompts and
// embeddings. Each pattern is the inner step of a product kernel, counted in
// multiply-adds of the model's values:
//
//   fp32_fma_avx2      float32 FMA on 8 lanes (AVX2 panels: bf16 weights
//                      widened once per panel, the default weights' AVX2 path)
//   fp32_fma_avx512    float32 FMA on 16 lanes
//   bf16_dot_avx512    vdpbf16ps: pairs of bfloat16 into float32 (AVX-512
//                      prompts with native bfloat16 products)
//   q8_maddubs_avx2    the AVX2 q8 kernel's step for a pair of 32-blocks:
//                      |x| times sign(x) w in 16-bit pairs, widened, scaled
//                      by the two blocks' scales (no VNNI)
//   q8_vnni_avx2       the same with AVX-VNNI's vpdpbusd on 8 lanes
//                      (AVX2-class CPUs that have it: Alder Lake on, Sierra
//                      Forest, Zen 5), per-block activation scales
//   q8_vnni_avx2_row   the same with one activation scale per row (what an
//                      int8 prompt kernel could do at a loss of precision)
//   q8_vnni_avx512     vpdpbusd on 16 lanes, per-block activation scales
//
// Prints JSON: GMAC/s per pattern, and each against bf16_dot_avx512 where
// the CPU has it. Not a test.
//   bench_isa_peak [--seconds S]

// GCC 12 flags the _mm512_undefined_* pass-through operands inside its own
// AVX-512 headers once they are inlined.
#ifndef __clang__  // a GCC-only warning
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gritserve/kernels/dispatch.h"

namespace kernels = gritserve::kernels;

namespace {

#define AVX2_FN __attribute__((target("avx2,fma,f16c"), noinline))
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), noinline))
#define BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), noinline))
#define VNNI256_FN __attribute__((target("avx2,fma,f16c,avxvnni"), noinline))
#define VNNI512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), noinline))

// Tells the compiler v may have changed, so a loop's products are not hoisted
// out of it as invariant; emits no instruction.
#define CLOBBER(v) asm volatile("" : "+v"(v))

// Register arrays stay in registers only when their loops are unrolled
// (the build's -O2 does not unroll them by itself).
#define UNROLL _Pragma("GCC unroll 16")

constexpr int64_t kSteps = 1 << 16;  // loop iterations per timed call
volatile float g_sink;

// Twelve independent accumulators cover the latency of two pipes.
AVX2_FN double Fp32Avx2(int64_t calls) {
  __m256 acc[12], a = _mm256_set1_ps(1e-7f), b = _mm256_set1_ps(1.0f);
  // Distinct starting values, or a compiler merges the identical chains.
  UNROLL
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  CLOBBER(b);  // not a known constant (a compiler could fold a product by one)
  for (int64_t c = 0; c < calls; ++c) {
    for (int64_t i = 0; i < kSteps; ++i) {
      CLOBBER(a);
      UNROLL
      for (auto& v : acc) v = _mm256_fmadd_ps(a, b, v);
    }
  }
  __m256 s = acc[0];
  UNROLL
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  g_sink = _mm256_cvtss_f32(s);
  return 12.0 * 8 * kSteps * calls;
}

AVX512_FN double Fp32Avx512(int64_t calls) {
  __m512 acc[12], a = _mm512_set1_ps(1e-7f), b = _mm512_set1_ps(1.0f);
  UNROLL
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  CLOBBER(b);
  for (int64_t c = 0; c < calls; ++c) {
    for (int64_t i = 0; i < kSteps; ++i) {
      CLOBBER(a);
      UNROLL
      for (auto& v : acc) v = _mm512_fmadd_ps(a, b, v);
    }
  }
  __m512 s = acc[0];
  UNROLL
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  g_sink = _mm512_cvtss_f32(s);
  return 12.0 * 16 * kSteps * calls;
}

BF16_FN double Bf16Avx512(int64_t calls) {
  __m512 acc[12];
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3400), b = (__m512bh)_mm512_set1_epi16(0x3f80);
  UNROLL
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  CLOBBER(b);
  for (int64_t c = 0; c < calls; ++c) {
    for (int64_t i = 0; i < kSteps; ++i) {
      CLOBBER(a);
      UNROLL
      for (auto& v : acc) v = _mm512_dpbf16_ps(v, a, b);
    }
  }
  __m512 s = acc[0];
  UNROLL
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  g_sink = _mm512_cvtss_f32(s);
  return 12.0 * 32 * kSteps * calls;
}

// A 2 x 4 tile (weight rows x activation rows), one pair of 32-blocks (64
// values) per step, as the AVX2 q8 kernel does it.
AVX2_FN double Q8MaddubsAvx2(int64_t calls) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i w[2][2], x[4][2];
  __m256 d[2], s[4], acc[2][4];
  UNROLL
  for (int r = 0; r < 2; ++r) {
    w[r][0] = _mm256_set1_epi8(static_cast<char>(3 + r));
    w[r][1] = _mm256_set1_epi8(static_cast<char>(-5 + r));
    d[r] = _mm256_set1_ps(1e-3f);
  }
  UNROLL
  for (int j = 0; j < 4; ++j) {
    x[j][0] = _mm256_set1_epi8(static_cast<char>(7 - j));
    x[j][1] = _mm256_set1_epi8(static_cast<char>(-2 - j));
    s[j] = _mm256_set1_ps(1e-3f);
    UNROLL
    for (int r = 0; r < 2; ++r) acc[r][j] = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < calls; ++c) {
    for (int64_t i = 0; i < kSteps; ++i) {
      __m256i ax[4][2];
      UNROLL
      for (int j = 0; j < 4; ++j) {
        CLOBBER(x[j][0]);
        CLOBBER(x[j][1]);
        ax[j][0] = _mm256_abs_epi8(x[j][0]);
        ax[j][1] = _mm256_abs_epi8(x[j][1]);
      }
      UNROLL
      for (int r = 0; r < 2; ++r) {
        CLOBBER(w[r][0]);
        UNROLL
        for (int j = 0; j < 4; ++j) {
          const __m256i p0 = _mm256_maddubs_epi16(ax[j][0], _mm256_sign_epi8(w[r][0], x[j][0]));
          const __m256i p1 = _mm256_maddubs_epi16(ax[j][1], _mm256_sign_epi8(w[r][1], x[j][1]));
          const __m256i dot =
              _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
          acc[r][j] =
              _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d[r], s[j]), acc[r][j]);
        }
      }
    }
  }
  __m256 t = _mm256_setzero_ps();
  UNROLL
  for (auto& row : acc) {
    UNROLL
    for (auto& v : row) t = _mm256_add_ps(t, v);
  }
  g_sink = _mm256_cvtss_f32(t);
  return 8.0 * 64 * kSteps * calls;
}

// The same tile with vpdpbusd (unsigned weight codes times signed
// activations; the offset term is per block and outside the loop).
// `per_row`: the activation scale is applied after the loop, not per pair.
template <bool kPerRow>
VNNI256_FN double Q8VnniAvx2(int64_t calls) {
  __m256i w[2][2], x[4][2];
  __m256 d[2], s[4], acc[2][4];
  UNROLL
  for (int r = 0; r < 2; ++r) {
    w[r][0] = _mm256_set1_epi8(static_cast<char>(3 + r));
    w[r][1] = _mm256_set1_epi8(static_cast<char>(100 + r));
    d[r] = _mm256_set1_ps(1e-3f);
  }
  UNROLL
  for (int j = 0; j < 4; ++j) {
    x[j][0] = _mm256_set1_epi8(static_cast<char>(7 - j));
    x[j][1] = _mm256_set1_epi8(static_cast<char>(-2 - j));
    s[j] = _mm256_set1_ps(1e-3f);
    UNROLL
    for (int r = 0; r < 2; ++r) acc[r][j] = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < calls; ++c) {
    for (int64_t i = 0; i < kSteps; ++i) {
      UNROLL
      for (int j = 0; j < 4; ++j) CLOBBER(x[j][0]);
      UNROLL
      for (int r = 0; r < 2; ++r) {
        CLOBBER(w[r][0]);
        UNROLL
        for (int j = 0; j < 4; ++j) {
          __m256i dot = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w[r][0], x[j][0]);
          dot = _mm256_dpbusd_avx_epi32(dot, w[r][1], x[j][1]);
          const __m256 scale = kPerRow ? d[r] : _mm256_mul_ps(d[r], s[j]);
          acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][j]);
        }
      }
    }
  }
  __m256 t = _mm256_setzero_ps();
  UNROLL
  for (auto& row : acc) {
    UNROLL
    for (auto& v : row) t = _mm256_add_ps(t, v);
  }
  g_sink = _mm256_cvtss_f32(t);
  return 8.0 * 64 * kSteps * calls;
}

// One pair of 32-blocks fills a 64-byte register: one vpdpbusd per output.
VNNI512_FN double Q8VnniAvx512(int64_t calls) {
  __m512i w[2], x[4];
  __m512 d[2], s[4], acc[2][4];
  UNROLL
  for (int r = 0; r < 2; ++r) {
    w[r] = _mm512_set1_epi8(static_cast<char>(100 + r));
    d[r] = _mm512_set1_ps(1e-3f);
  }
  UNROLL
  for (int j = 0; j < 4; ++j) {
    x[j] = _mm512_set1_epi8(static_cast<char>(7 - j));
    s[j] = _mm512_set1_ps(1e-3f);
    UNROLL
    for (int r = 0; r < 2; ++r) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < calls; ++c) {
    for (int64_t i = 0; i < kSteps; ++i) {
      UNROLL
      for (int j = 0; j < 4; ++j) CLOBBER(x[j]);
      UNROLL
      for (int r = 0; r < 2; ++r) {
        CLOBBER(w[r]);
        UNROLL
        for (int j = 0; j < 4; ++j) {
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[r], x[j]);
          acc[r][j] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d[r], s[j]), acc[r][j]);
        }
      }
    }
  }
  __m512 t = _mm512_setzero_ps();
  UNROLL
  for (auto& row : acc) {
    UNROLL
    for (auto& v : row) t = _mm512_add_ps(t, v);
  }
  g_sink = _mm512_cvtss_f32(t);
  return 8.0 * 64 * kSteps * calls;
}

struct Pattern {
  const char* name;
  bool available;
  double (*run)(int64_t calls);  // multiply-adds done
};

// GMAC/s of `p` over about `seconds`: the best of five timed rounds.
double Measure(const Pattern& p, double seconds) {
  p.run(4);  // warm up (clock ramp, AVX-512 licence)
  const auto t0 = std::chrono::steady_clock::now();
  p.run(16);
  const double probe = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto calls = std::max<int64_t>(1, static_cast<int64_t>(16 * seconds / 5 / probe));
  double best = 0;
  for (int round = 0; round < 5; ++round) {
    const auto s0 = std::chrono::steady_clock::now();
    const double macs = p.run(calls);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
    best = std::max(best, macs / dt / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gritserve: multiply-add ceilings per instruction family (one core)"};
  double seconds = 1.0;
  app.add_option("--seconds", seconds, "time per pattern");
  CLI11_PARSE(app, argc, argv);
  const bool avx2 = kernels::CpuHasAvx2();
  const bool avx512 = kernels::CpuHas(kernels::Isa::kAvx512);
  const std::vector<Pattern> patterns = {
      {"fp32_fma_avx2", avx2, Fp32Avx2},
      {"fp32_fma_avx512", avx512, Fp32Avx512},
      {"bf16_dot_avx512", avx512 && __builtin_cpu_supports("avx512bf16"), Bf16Avx512},
      {"q8_maddubs_avx2", avx2, Q8MaddubsAvx2},
      {"q8_vnni_avx2", kernels::CpuHasAvxVnni(), Q8VnniAvx2<false>},
      {"q8_vnni_avx2_row", kernels::CpuHasAvxVnni(), Q8VnniAvx2<true>},
      {"q8_vnni_avx512", avx512 && kernels::CpuHasAvx512Vnni(), Q8VnniAvx512},
  };
  nlohmann::json out, gmacs;
  for (const Pattern& p : patterns) {
    if (p.available) gmacs[p.name] = Measure(p, seconds);
  }
  out["gmac_per_s_one_core"] = gmacs;
  if (gmacs.contains("bf16_dot_avx512")) {
    const double top = gmacs["bf16_dot_avx512"].get<double>();
    for (const auto& [name, v] : gmacs.items()) {
      out["bf16_dot_avx512_over"][name] = top / v.get<double>();
    }
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
