// Weight memory: large tensors sit on 2 MiB boundaries (where transparent huge
// pages can back them), hold what is written, convert on copy, and give their
// mapping back when the last reference goes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "gritserve/kernels/host_memory.h"
#include "gritserve/kernels/linear.h"

namespace gritserve {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

// Whether any mapping in /proc/self/maps covers `addr`.
bool Mapped(uintptr_t addr) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    in >> std::hex >> lo >> dash >> hi;
    if (addr >= lo && addr < hi) return true;
  }
  return false;
}

TEST(StreamedWeightMemory, LargeTensorsStartOnAHugePageBoundaryAndHoldTheirValues) {
  ASSERT_TRUE(HugePagesWanted()) << "GRITSERVE_HUGE_PAGES=0 is set in the test environment";
  // 3 MiB + 4 bytes: not a whole number of pages, so the tail is handled too.
  at::Tensor t = StreamedWeightEmpty({(3 << 18) + 1}, at::kFloat);
  const auto addr = reinterpret_cast<uintptr_t>(t.data_ptr());
  EXPECT_EQ(addr % kHugePage, 0u);
  EXPECT_TRUE(t.is_contiguous());
  t.copy_(at::arange(t.numel(), at::kFloat));
  EXPECT_EQ(t[0].item<float>(), 0.0f);
  EXPECT_EQ(t[t.numel() - 1].item<float>(), static_cast<float>(t.numel() - 1));
  EXPECT_TRUE(Mapped(addr));
  t = at::Tensor();
  EXPECT_FALSE(Mapped(addr)) << "the mapping outlived its tensor";
}

TEST(StreamedWeightMemory, SmallTensorsUseTheOrdinaryAllocator) {
  at::Tensor t = StreamedWeightEmpty({4, 8}, at::kFloat);
  EXPECT_EQ(t.sizes(), at::IntArrayRef({4, 8}));
  t.fill_(2.5f);
  EXPECT_EQ(t.sum().item<float>(), 80.0f);
}

TEST(StreamedWeightMemory, CopyConvertsAndMatchesTheSource) {
  at::manual_seed(1);
  at::Tensor src = at::randn({1024, 1024}).to(at::kBFloat16);  // 2 MiB in bf16
  at::Tensor f32 = StreamedWeightCopy(src, at::kFloat);
  EXPECT_EQ(f32.scalar_type(), at::kFloat);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f32.data_ptr()) % kHugePage, 0u);
  EXPECT_TRUE(at::equal(f32, src.to(at::kFloat)));
  // A transposed view comes back contiguous, in the view's order.
  at::Tensor tr = StreamedWeightCopy(f32.t(), at::kFloat);
  EXPECT_TRUE(tr.is_contiguous());
  EXPECT_TRUE(at::equal(tr, f32.t()));
}

TEST(StreamedWeightMemory, PackedLinearOnHugePageWeightsMatchesTheProduct) {
  at::manual_seed(2);
  at::Tensor w = at::randn({1536, 1024}) * 0.05;  // [out, in], 6 MiB
  const Linear lin(w.clone(), Linear::Layout::kOutIn, at::Tensor(), /*pack=*/true);
  for (int64_t rows : {1, 7, 64}) {
    at::Tensor x = at::randn({rows, 1024});
    const at::Tensor ref = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
    EXPECT_LT((lin(x).to(at::kDouble) - ref).abs().max().item<double>(), 1e-4) << rows << " rows";
  }
}

}  // namespace
}  // namespace gritserve
