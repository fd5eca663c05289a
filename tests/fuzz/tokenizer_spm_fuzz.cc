// sentencepiece (through its isolated module, spm_api.h): the demo model the
// project trains for its Llama and Mistral checkpoints, trained once here.
#include "gritserve/tokenizer/tokenizer_writer.h"
#include "tokenizer_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = [] {
    const std::string dir = gritserve::fuzz::ScratchDir("spm");
    gritserve::WriteDemoSentencePieceTokenizer(dir);
    return gritserve::Tokenizer::FromDirectory(dir);
  }();
  gritserve::fuzz::FuzzTokenizer(*tok, data, size);
  return 0;
}
