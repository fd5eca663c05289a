// config.json text to ModelConfig. What it accepts must write back
// (ToJsonText) to text that parses to the same config.
#include "fuzz_util.h"
#include "gritserve/common/error.h"
#include "gritserve/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using gritserve::ModelConfig;
  ModelConfig c;
  try {
    c = ModelConfig::FromJsonText(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const gritserve::Error&) {
    return 0;
  }
  const std::string text = c.ToJsonText();
  gritserve::fuzz::Check(ModelConfig::FromJsonText(text).ToJsonText() == text,
                         "an accepted config round-trips through ToJsonText");
  // Its tensor list, when small enough to build (a config may declare any depth).
  if (c.num_hidden_layers <= 1024) c.NumParameters();
  return 0;
}
