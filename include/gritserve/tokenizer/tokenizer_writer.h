// Writes small, deterministic tokenizers for generated test / demo checkpoints.
#pragma once

#include <cstdint>
#include <string>

namespace gritserve {

// Trains a byte-level BPE (GPT-2 byte mapping, the Qwen2 split regex, NFC normalizer,
// ByteLevel decoder) with `num_merges` merges on an embedded English + code +
// multilingual corpus, appends "<|endoftext|>", "<|im_start|>", "<|im_end|>", and
// writes DIR/tokenizer.json (HF format) and DIR/tokenizer_config.json (eos/pad
// "<|endoftext|>", no BOS). Returns the vocabulary size (regular + added). Fewer merges
// are made if the corpus runs out of pairs. Throws LoadError if DIR is not writable.
int32_t WriteDemoBpeTokenizer(const std::string& dir, int num_merges = 500);

// Trains a sentencepiece BPE model (byte_fallback, <unk>=0, <s>=1, </s>=2) on the same
// corpus and writes DIR/tokenizer.model and DIR/tokenizer_config.json (bos "<s>", eos
// "</s>", add_bos_token true). Deterministic and quiet. Returns the vocabulary size.
// vocab_size must be at least 385 (256 byte pieces, 3 specials, the covered characters).
int32_t WriteDemoSentencePieceTokenizer(const std::string& dir, int vocab_size = 400);

// The embedded training corpus, for tests that want in-domain text.
const std::string& DemoTokenizerCorpus();

}  // namespace gritserve
