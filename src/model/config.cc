#include "gritserve/model/config.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"
#include "gritserve/model/tensor_names.h"

namespace gritserve {
namespace {

using nlohmann::json;

constexpr const char* kConfigFile = "config.json";

struct ArchInfo {
  Architecture arch;
  const char* name;
  const char* model_type;
};

constexpr ArchInfo kArchitectures[] = {
    {Architecture::kQwen2, "Qwen2ForCausalLM", "qwen2"},
    {Architecture::kLlama, "LlamaForCausalLM", "llama"},
    {Architecture::kMistral, "MistralForCausalLM", "mistral"},
};

const ArchInfo& InfoFor(Architecture arch) {
  for (const ArchInfo& info : kArchitectures) {
    if (info.arch == arch) return info;
  }
  throw Error(ErrorKind::kInternal, "unknown Architecture enum value");
}

std::string JoinSupported() {
  std::string out;
  for (const std::string& name : SupportedArchitectures()) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

// eos_token_id is an int in most configs but a list in Llama-3 / Qwen2.5 generation configs.
std::vector<int64_t> TokenIdList(const JsonFields& f, const char* key) {
  std::vector<int64_t> ids;
  const json* v = f.Find(key);
  if (v == nullptr) return ids;
  if (v->is_number_integer()) {
    ids.push_back(v->get<int64_t>());
  } else if (v->is_array()) {
    for (const json& e : *v) {
      if (!e.is_number_integer()) throw f.TypeError(key, "an integer or a list of integers");
      ids.push_back(e.get<int64_t>());
    }
  } else {
    throw f.TypeError(key, "an integer or a list of integers");
  }
  return ids;
}

void AppendUnique(std::vector<int64_t>& into, const std::vector<int64_t>& from) {
  for (int64_t id : from) {
    if (std::find(into.begin(), into.end(), id) == into.end()) into.push_back(id);
  }
}

void CheckRopeScaling(const RopeScaling& rs) {
  if (!(rs.factor > 0)) throw LoadError("config.json: rope_scaling 'factor' must be positive");
  if (rs.type != "llama3") return;
  if (!(rs.low_freq_factor > 0) || !(rs.high_freq_factor > rs.low_freq_factor)) {
    throw LoadError("config.json: rope_scaling needs 0 < 'low_freq_factor' < 'high_freq_factor'");
  }
  if (rs.original_max_position_embeddings <= 0) {
    throw LoadError(
        "config.json: rope_scaling 'original_max_position_embeddings' must be positive");
  }
}

std::optional<RopeScaling> ParseRopeScaling(const JsonFields& f) {
  const json* rs_json = f.Find("rope_scaling");
  if (rs_json == nullptr) return std::nullopt;
  if (!rs_json->is_object()) throw f.TypeError("rope_scaling", "an object or null");
  const JsonFields rs = f.Nested(*rs_json);
  // transformers renamed "type" to "rope_type"; published configs carry either.
  const char* type_key = rs.Has("rope_type") ? "rope_type" : "type";
  const json* type_json = rs.Find(type_key);
  if (type_json == nullptr || !type_json->is_string()) {
    throw LoadError("config.json: 'rope_scaling' needs a string 'rope_type' (or 'type')");
  }
  const std::string type = type_json->get<std::string>();
  if (type == "default") return std::nullopt;
  if (type != "llama3" && type != "linear") {
    throw LoadError("config.json: unsupported rope_scaling type '" + type +
                    "'; supported: llama3, linear, default");
  }
  RopeScaling out;
  out.type = type;
  out.factor = rs.Number("factor").value_or(out.factor);
  out.low_freq_factor = rs.Number("low_freq_factor").value_or(out.low_freq_factor);
  out.high_freq_factor = rs.Number("high_freq_factor").value_or(out.high_freq_factor);
  out.original_max_position_embeddings =
      rs.Int("original_max_position_embeddings").value_or(out.original_max_position_embeddings);
  CheckRopeScaling(out);
  return out;
}

void RequirePositive(int64_t value, const char* key) {
  if (value <= 0) {
    throw LoadError(std::string("config.json: '") + key + "' must be positive, got " +
                    std::to_string(value));
  }
}

void Validate(const ModelConfig& c) {
  RequirePositive(c.vocab_size, "vocab_size");
  RequirePositive(c.hidden_size, "hidden_size");
  RequirePositive(c.intermediate_size, "intermediate_size");
  RequirePositive(c.num_hidden_layers, "num_hidden_layers");
  RequirePositive(c.num_attention_heads, "num_attention_heads");
  RequirePositive(c.num_key_value_heads, "num_key_value_heads");
  RequirePositive(c.head_dim, "head_dim");
  RequirePositive(c.max_position_embeddings, "max_position_embeddings");
  if (c.sliding_window) RequirePositive(*c.sliding_window, "sliding_window");
  if (c.window_from_layer < 0) {
    throw LoadError("config.json: 'max_window_layers' must not be negative, got " +
                    std::to_string(c.window_from_layer));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    throw LoadError("config.json: 'num_attention_heads' (" + std::to_string(c.num_attention_heads) +
                    ") must be a multiple of 'num_key_value_heads' (" +
                    std::to_string(c.num_key_value_heads) + ")");
  }
  // RoPE rotates pairs of dimensions.
  if (c.head_dim % 2 != 0) {
    throw LoadError("config.json: 'head_dim' must be even, got " + std::to_string(c.head_dim));
  }
  if (!(c.rms_norm_eps > 0)) throw LoadError("config.json: 'rms_norm_eps' must be positive");
  if (!(c.rope_theta > 0)) throw LoadError("config.json: 'rope_theta' must be positive");
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LoadError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json ParseJsonObject(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number overflow
    throw LoadError(what + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw LoadError(what + ": expected a JSON object");
  return j;
}

// Recorded for information only, so a non-string value is ignored rather than refused.
std::optional<std::string> InformationalString(const JsonFields& f, const char* key) {
  const json* v = f.Find(key);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

const ArchInfo* FindArchitecture(const std::string& name) {
  for (const ArchInfo& candidate : kArchitectures) {
    if (name == candidate.name) return &candidate;
  }
  return nullptr;
}

// transformers instantiates the first class "architectures" lists.
void ReadArchitecture(const JsonFields& f, ModelConfig& c) {
  const json* archs = f.Find("architectures");
  if (archs == nullptr) throw f.Missing("architectures");
  if (!archs->is_array() || archs->empty() || !archs->front().is_string()) {
    throw LoadError("config.json: key 'architectures' must be a non-empty list of strings");
  }
  c.architecture_name = archs->front().get<std::string>();
  const ArchInfo* info = FindArchitecture(c.architecture_name);
  if (info == nullptr) {
    throw LoadError("config.json: unsupported architecture '" + c.architecture_name +
                    "'; supported: " + JoinSupported());
  }
  c.arch = info->arch;
  c.model_type = InformationalString(f, "model_type").value_or(info->model_type);
}

void ReadSizes(const JsonFields& f, ModelConfig& c) {
  c.hidden_size = f.RequireInt("hidden_size");
  c.intermediate_size = f.RequireInt("intermediate_size");
  c.num_hidden_layers = f.RequireInt("num_hidden_layers");
  c.num_attention_heads = f.RequireInt("num_attention_heads");
  c.vocab_size = f.RequireInt("vocab_size");
  // Checked before Validate: the defaults below divide by it.
  RequirePositive(c.num_attention_heads, "num_attention_heads");
  c.num_key_value_heads = f.Int("num_key_value_heads").value_or(c.num_attention_heads);
  if (auto head_dim = f.Int("head_dim")) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      throw LoadError("config.json: 'hidden_size' (" + std::to_string(c.hidden_size) +
                      ") is not a multiple of 'num_attention_heads' (" +
                      std::to_string(c.num_attention_heads) + ") and 'head_dim' is not given");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (auto max_positions = f.Int("max_position_embeddings")) {
    c.max_position_embeddings = *max_positions;
  } else {
    c.max_position_embeddings = 4096;
    spdlog::debug("config.json: no max_position_embeddings, assuming {}",
                  c.max_position_embeddings);
  }
}

// Biases and the sliding window: each architecture spells them its own way.
void ReadArchitectureFields(const JsonFields& f, ModelConfig& c) {
  switch (c.arch) {
    case Architecture::kQwen2:
      c.qkv_bias = true;
      c.o_bias = false;
      c.mlp_bias = false;
      // Qwen2 configs always carry sliding_window; it applies only with use_sliding_window.
      if (f.Bool("use_sliding_window").value_or(false)) {
        c.sliding_window = f.RequireInt("sliding_window");
        // Hugging Face's Qwen2Config defaults max_window_layers to 28.
        c.window_from_layer = f.Int("max_window_layers").value_or(28);
      }
      break;
    case Architecture::kLlama: {
      const bool attention_bias = f.Bool("attention_bias").value_or(false);
      c.qkv_bias = attention_bias;
      c.o_bias = attention_bias;
      c.mlp_bias = f.Bool("mlp_bias").value_or(false);
      break;
    }
    case Architecture::kMistral:
      if (auto window = f.Int("sliding_window")) c.sliding_window = *window;
      break;
  }
}

// Some field combinations have no HF spelling; refuse rather than write a config that would
// load differently.
void CheckHfSpellable(const ModelConfig& c) {
  if (c.arch == Architecture::kQwen2 && (!c.qkv_bias || c.o_bias || c.mlp_bias)) {
    throw Error(ErrorKind::kInternal, "Qwen2 configs always have q/k/v bias and nothing else");
  }
  if (c.arch == Architecture::kLlama && c.qkv_bias != c.o_bias) {
    throw Error(ErrorKind::kInternal, "Llama attention_bias covers q/k/v and o together");
  }
  if (c.arch == Architecture::kMistral && (c.qkv_bias || c.o_bias || c.mlp_bias)) {
    throw Error(ErrorKind::kInternal, "Mistral has no biases");
  }
  if (c.arch == Architecture::kLlama && c.sliding_window) {
    throw Error(ErrorKind::kInternal, "Llama has no sliding window");
  }
}

json RopeScalingJson(const RopeScaling& rope_scaling) {
  json rs;
  rs["rope_type"] = rope_scaling.type;
  rs["factor"] = rope_scaling.factor;
  if (rope_scaling.type == "llama3") {
    rs["low_freq_factor"] = rope_scaling.low_freq_factor;
    rs["high_freq_factor"] = rope_scaling.high_freq_factor;
    rs["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
  }
  return rs;
}

}  // namespace

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> names;
  for (const ArchInfo& info : kArchitectures) names.emplace_back(info.name);
  return names;
}

ModelConfig ModelConfig::FromJsonText(const std::string& text) {
  const json j = ParseJsonObject(text, kConfigFile);
  const JsonFields f = JsonFields::File(j, kConfigFile);
  ModelConfig c;
  ReadArchitecture(f, c);
  ReadSizes(f, c);
  c.rms_norm_eps = f.Number("rms_norm_eps").value_or(1e-6);
  c.rope_theta = f.Number("rope_theta").value_or(10000.0);
  c.rope_scaling = ParseRopeScaling(f);
  c.tie_word_embeddings = f.Bool("tie_word_embeddings").value_or(false);
  ReadArchitectureFields(f, c);
  if (auto bos = f.Int("bos_token_id")) c.bos_token_id = *bos;
  c.eos_token_ids = TokenIdList(f, "eos_token_id");
  if (auto dtype = InformationalString(f, "torch_dtype")) c.torch_dtype = *dtype;
  Validate(c);
  return c;
}

ModelConfig ModelConfig::FromDirectory(const std::string& dir) {
  const std::filesystem::path base(dir);
  const std::string config_path = (base / kConfigFile).string();
  if (!std::filesystem::is_regular_file(config_path)) {
    throw LoadError("config file not found: " + config_path);
  }
  ModelConfig c;
  try {
    c = FromJsonText(ReadTextFile(config_path));
  } catch (const Error& e) {
    // Name the file on disk, not just "config.json", so the user knows which checkpoint.
    throw LoadError(std::string(e.what()) + " (in " + config_path + ")");
  }

  // generation_config.json is what generate() uses; its eos list is often longer (chat models
  // stop on <|im_end|> as well as <|endoftext|>).
  const std::string gen_path = (base / "generation_config.json").string();
  if (std::filesystem::is_regular_file(gen_path)) {
    const json g = ParseJsonObject(ReadTextFile(gen_path), gen_path);
    const JsonFields gen = JsonFields::File(g, gen_path);
    AppendUnique(c.eos_token_ids, TokenIdList(gen, "eos_token_id"));
    // config.json's own bos_token_id wins, and generation_config.json is not where a model's
    // shape is fixed: a malformed one here is ignored rather than refused.
    const json* bos = gen.Find("bos_token_id");
    if (!c.bos_token_id && bos != nullptr && bos->is_number_integer()) {
      c.bos_token_id = bos->get<int64_t>();
    }
  }
  return c;
}

std::string ModelConfig::ToJsonText() const {
  const ArchInfo& info = InfoFor(arch);
  CheckHfSpellable(*this);

  json j;
  j["architectures"] = json::array({info.name});
  j["model_type"] = info.model_type;
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = rope_scaling ? RopeScalingJson(*rope_scaling) : json(nullptr);
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["vocab_size"] = vocab_size;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype.empty() ? "float32" : torch_dtype;

  switch (arch) {
    case Architecture::kQwen2:
      j["use_sliding_window"] = sliding_window.has_value();
      j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
      j["max_window_layers"] = sliding_window ? window_from_layer : num_hidden_layers;
      break;
    case Architecture::kLlama:
      j["attention_bias"] = qkv_bias;
      j["mlp_bias"] = mlp_bias;
      j["pretraining_tp"] = 1;
      break;
    case Architecture::kMistral:
      j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
      break;
  }

  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  }
  return j.dump(2) + "\n";
}

int64_t ModelConfig::NumParameters() const {
  int64_t total = 0;
  for (const TensorSpec& spec : ExpectedTensors(*this)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    total += n;
  }
  return total;
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  namespace tn = tensor_names;
  const int64_t h = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;

  std::vector<TensorSpec> specs;
  specs.push_back({tn::kEmbedTokens, {c.vocab_size, h}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const tn::LayerNames names(i);
    auto linear = [&](const char* module, int64_t out, int64_t in, bool bias) {
      specs.push_back({names.Weight(module), {out, in}});
      if (bias) specs.push_back({names.Bias(module), {out}});
    };
    specs.push_back({names.Weight(tn::kInputLayernorm), {h}});
    linear(tn::kQProj, q_dim, h, c.qkv_bias);
    linear(tn::kKProj, kv_dim, h, c.qkv_bias);
    linear(tn::kVProj, kv_dim, h, c.qkv_bias);
    linear(tn::kOProj, h, q_dim, c.o_bias);
    specs.push_back({names.Weight(tn::kPostAttentionLayernorm), {h}});
    linear(tn::kGateProj, inter, h, c.mlp_bias);
    linear(tn::kUpProj, inter, h, c.mlp_bias);
    linear(tn::kDownProj, h, inter, c.mlp_bias);
  }
  specs.push_back({tn::kFinalNorm, {h}});
  if (!c.tie_word_embeddings) specs.push_back({tn::kLmHead, {c.vocab_size, h}});
  return specs;
}

}  // namespace gritserve
