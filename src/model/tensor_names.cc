#include "gritserve/model/tensor_names.h"

namespace gritserve {
namespace tensor_names {
namespace {

constexpr char kLayerPrefix[] = "model.layers.";
constexpr char kWeightSuffix[] = ".weight";
constexpr char kBiasSuffix[] = ".bias";

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

LayerNames::LayerNames(int64_t index) : prefix_(kLayerPrefix + std::to_string(index) + ".") {}

std::string LayerNames::Weight(const char* module) const {
  return prefix_ + module + kWeightSuffix;
}

std::string LayerNames::Bias(const char* module) const { return prefix_ + module + kBiasSuffix; }

// "input_layernorm.weight", "post_attention_layernorm.weight" and kFinalNorm all end so.
bool IsNormWeight(const std::string& name) {
  return EndsWith(name, std::string("norm") + kWeightSuffix);
}

bool IsBias(const std::string& name) { return EndsWith(name, kBiasSuffix); }

bool IsRotaryInvFreq(const std::string& name) { return EndsWith(name, ".rotary_emb.inv_freq"); }

}  // namespace tensor_names

// Every projection module (kQProj ... kDownProj) ends in "_proj".
bool IsMatrixWeight(const std::string& name) {
  return name == tensor_names::kLmHead ||
         tensor_names::EndsWith(name, std::string("_proj") + tensor_names::kWeightSuffix);
}

}  // namespace gritserve
