// Attention layout of one forward pass. The mode only decides which keys each
// query may see (the mask); nothing else in the decoder depends on it.
#pragma once

#include <cstdint>
#include <vector>

namespace gritserve {

enum class AttentionMode {
  kCausal,         // token i sees keys 0..i (and the sliding window, if the model has one)
  kBidirectional,  // every token sees every valid key
  kBlocks,         // explicit layout over the whole sequence (cached keys + new tokens)
};

// One contiguous run of tokens in a kBlocks layout.
struct AttentionBlock {
  int64_t length = 0;
  bool bidirectional = false;  // within the block: all-to-all, or causal
  bool sees_previous = false;  // whether it sees every token of the blocks before it
};

struct AttentionSpec {
  AttentionMode mode = AttentionMode::kCausal;
  // kBlocks only: covers cached tokens followed by the new tokens, in order.
  std::vector<AttentionBlock> blocks;

  static AttentionSpec Causal() { return {AttentionMode::kCausal, {}}; }
  static AttentionSpec Bidirectional() { return {AttentionMode::kBidirectional, {}}; }
  static AttentionSpec Blocks(std::vector<AttentionBlock> b) {
    return {AttentionMode::kBlocks, std::move(b)};
  }
};

}  // namespace gritserve
