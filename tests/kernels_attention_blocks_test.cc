// Attention over long inputs runs in blocks of query rows against a mask held
// as per-token key intervals: blocked results equal one-block results and a
// float64 reference, for causal, bidirectional and document-block layouts,
// head sizes the one-pass kernel does and does not take, odd lengths, and on
// every CPU path this machine has (AVX-512, GRITSERVE_CPU_ISA=avx2,
// GRITSERVE_CPU_KERNELS=aten).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <string>
#include <vector>

#include "gritserve/kernels/attention.h"
#include "gritserve/kernels/dispatch.h"
#include "attention_reference.h"

namespace gritserve {
namespace {

constexpr float kMasked = -1e30f;

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (value != nullptr) ::setenv(name, value, 1);
  }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

enum class Layout { kCausal, kBidirectional, kBlocks };

// T new tokens after `past` cached keys; batch row 1 has its last 3 keys
// padded. Blocks: two bidirectional documents that see nothing else, then a
// causal prompt that sees them.
struct Case {
  Layout layout;
  int64_t past, t;
  int64_t s() const { return past + t; }
  // Key interval [lo, hi) of each new token, as the decoder describes layouts.
  void Intervals(std::vector<int64_t>* lo, std::vector<int64_t>* hi) const {
    lo->assign(t, 0);
    hi->assign(t, s());
    const int64_t doc1 = s() / 3, doc2 = 2 * s() / 3;  // block ends
    for (int64_t i = 0; i < t; ++i) {
      const int64_t p = past + i;
      if (layout == Layout::kCausal) (*hi)[i] = p + 1;
      if (layout == Layout::kBlocks) {
        if (p < doc1) {
          (*hi)[i] = doc1;
        } else if (p < doc2) {
          (*lo)[i] = doc1, (*hi)[i] = doc2;
        } else {
          (*hi)[i] = p + 1;
        }
      }
    }
  }
  at::Tensor KeyValid(int64_t b) const {
    at::Tensor valid = at::ones({b, s()}, at::kBool);  // [B, S]
    if (b > 1) valid[1].narrow(0, s() - 3, 3).fill_(false);
    return valid;
  }
  kernels::AttentionMask Mask(int64_t b) const {
    std::vector<int64_t> lo, hi;
    Intervals(&lo, &hi);
    return kernels::AttentionMask(at::tensor(lo, at::kLong), at::tensor(hi, at::kLong), KeyValid(b),
                                  at::kFloat, kMasked);
  }
  // The same mask written out element by element.  -> [B, T, S]
  at::Tensor Dense(int64_t b) const {
    std::vector<int64_t> lo, hi;
    Intervals(&lo, &hi);
    const at::Tensor valid = KeyValid(b);
    at::Tensor mask = at::zeros({b, t, s()});
    auto m = mask.accessor<float, 3>();
    auto kv = valid.accessor<bool, 2>();
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t i = 0; i < t; ++i) {
        for (int64_t j = 0; j < s(); ++j) {
          if (j < lo[i] || j >= hi[i] || !kv[bi][j]) m[bi][i][j] = kMasked;
        }
      }
    }
    return mask;
  }
};

using testing::MaxDiff;
constexpr auto& Reference = testing::AttentionReference;

std::string Name(Layout l) {
  return l == Layout::kCausal ? "causal" : l == Layout::kBidirectional ? "bidirectional" : "blocks";
}

TEST(AttentionMask, IntervalRowsEqualTheMaskWrittenOut) {
  for (const Layout layout : {Layout::kCausal, Layout::kBidirectional, Layout::kBlocks}) {
    const Case c{layout, 13, 29};
    kernels::AttentionMask mask = c.Mask(2);
    const at::Tensor dense = c.Dense(2);  // [B, T, S]
    EXPECT_TRUE(at::equal(mask.Rows(0, c.t), dense)) << Name(layout);
    EXPECT_TRUE(at::equal(mask.Rows(5, 7), dense.narrow(1, 5, 7))) << Name(layout);
    EXPECT_TRUE(at::equal(mask.Narrow(c.t - 1, 1).Rows(0, 1), dense.narrow(1, c.t - 1, 1)));
    mask.MaterialiseIfSmall(2 * c.t * c.s());
    EXPECT_TRUE(at::equal(mask.Rows(3, 11), dense.narrow(1, 3, 11))) << Name(layout);
  }
}

// Each path the machine has: its default backend, and the same backend with
// budgets so small that every few query tokens make a block.
TEST(Attention, BlockedEqualsOneBlockOnEveryPathLayoutAndHeadSize) {
  struct Path {
    const char* var;
    const char* value;
  };
  std::vector<Path> paths = {{"GRITSERVE_CPU_ISA", "avx2"}, {"GRITSERVE_CPU_KERNELS", "aten"}};
  if (kernels::CpuHasAvx512()) paths.push_back({"GRITSERVE_CPU_ISA", nullptr});
  const int64_t b = 2, hkv = 2, g = 3;
  for (const Path& path : paths) {
    ScopedEnv env(path.var, path.value);
    const auto backend = kernels::AttentionBackend::For(at::Device(at::kCPU), at::kFloat);
    const std::string where = std::string(path.var) + "=" + (path.value ? path.value : "");
    for (const int64_t d : {32, 48, 64, 80, 128}) {
      for (const Case c : {Case{Layout::kCausal, 0, 37}, Case{Layout::kCausal, 23, 41},
                           Case{Layout::kBidirectional, 0, 53}, Case{Layout::kBlocks, 0, 61},
                           Case{Layout::kBlocks, 30, 19}}) {
        at::manual_seed(d * 1000 + c.t);
        const at::Tensor q = at::randn({b, hkv, g * c.t, d}) / std::sqrt(static_cast<double>(d));
        // K and V as strided views, as the decoder passes cache slices.
        const at::Tensor k = at::randn({b, hkv, c.s() + 4, d}).narrow(2, 0, c.s());
        const at::Tensor v = at::randn({b, hkv, c.s() + 4, d}).narrow(2, 2, c.s());
        // About 5 query tokens per block on the paths that hold scores, and
        // in the one-pass kernel's mask.
        kernels::AttentionBackend blocked = backend;
        blocked.score_block_bytes = 5 * hkv * g * b * c.s() * 4;
        blocked.mask_block_bytes = 5 * b * c.s() * 4;
        ASSERT_EQ(blocked.QueryBlock(b, hkv * g, c.t, c.s(), false), 5);
        ASSERT_EQ(blocked.QueryBlock(b, hkv * g, c.t, c.s(), true), 5);
        ASSERT_EQ(backend.QueryBlock(b, hkv * g, c.t, c.s(), false), c.t);

        const at::Tensor want = Reference(q, k, v, c.Dense(b), g);
        const at::Tensor whole = kernels::Attention(backend, q, k, v, c.Mask(b), 1.0, g);
        const at::Tensor parts = kernels::Attention(blocked, q, k, v, c.Mask(b), 1.0, g);
        ASSERT_EQ(parts.sizes(), whole.sizes());
        EXPECT_LT(MaxDiff(whole, want), 2e-5) << where << " d=" << d << " " << Name(c.layout);
        EXPECT_LT(MaxDiff(parts, whole), 1e-5) << where << " d=" << d << " " << Name(c.layout);
        // The scale applied inside (the ATen path's convention) blocks the same way.
        const at::Tensor scaled = kernels::Attention(blocked, q * 2, k, v, c.Mask(b), 0.5, g);
        EXPECT_LT(MaxDiff(scaled, whole), 1e-5) << where << " d=" << d << " " << Name(c.layout);
      }
    }
  }
}

}  // namespace
}  // namespace gritserve
