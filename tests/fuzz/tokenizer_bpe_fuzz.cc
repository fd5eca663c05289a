// Byte-level BPE: the tiny Qwen2 fixture's tokenizer.json (its pre-tokenizer
// regex, NFC normaliser, added tokens and merges).
#include "tokenizer_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = gritserve::Tokenizer::FromDirectory(gritserve::fuzz::Fixture("qwen2-tiny"));
  gritserve::fuzz::FuzzTokenizer(*tok, data, size);
  return 0;
}
