#include "gritserve/model/config.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gritserve/common/error.h"

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

// Optional keys that are present but null mean "use the default", as in HF.
bool Has(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int64_t RequireInt(const json& j, const char* key) {
  if (!Has(j, key)) {
    throw LoadError(std::string("config.json: missing required key '") + key + "'");
  }
  const json& v = j.at(key);
  if (!v.is_number_integer()) {
    throw LoadError(std::string("config.json: key '") + key + "' must be an integer, got " +
                    v.dump());
  }
  return v.get<int64_t>();
}

int64_t OptInt(const json& j, const char* key, int64_t fallback) {
  return Has(j, key) ? RequireInt(j, key) : fallback;
}

double OptNumber(const json& j, const char* key, double fallback) {
  if (!Has(j, key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_number()) {
    throw LoadError(std::string("config.json: key '") + key + "' must be a number, got " +
                    v.dump());
  }
  return v.get<double>();
}

bool OptBool(const json& j, const char* key, bool fallback) {
  if (!Has(j, key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_boolean()) {
    throw LoadError(std::string("config.json: key '") + key + "' must be a boolean, got " +
                    v.dump());
  }
  return v.get<bool>();
}

// eos_token_id is an int in most configs but a list in Llama-3 / Qwen2.5 generation configs.
std::vector<int64_t> TokenIdList(const json& j, const char* key, const std::string& file) {
  std::vector<int64_t> ids;
  if (!Has(j, key)) return ids;
  const json& v = j.at(key);
  auto bad = [&] {
    return LoadError(file + ": key '" + key + "' must be an integer or a list of integers, got " +
                     v.dump());
  };
  if (v.is_number_integer()) {
    ids.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_number_integer()) throw bad();
      ids.push_back(e.get<int64_t>());
    }
  } else {
    throw bad();
  }
  return ids;
}

void AppendUnique(std::vector<int64_t>& into, const std::vector<int64_t>& from) {
  for (int64_t id : from) {
    if (std::find(into.begin(), into.end(), id) == into.end()) into.push_back(id);
  }
}

std::optional<RopeScaling> ParseRopeScaling(const json& j) {
  if (!Has(j, "rope_scaling")) return std::nullopt;
  const json& rs = j.at("rope_scaling");
  if (!rs.is_object()) {
    throw LoadError("config.json: key 'rope_scaling' must be an object or null, got " + rs.dump());
  }
  // transformers renamed "type" to "rope_type"; published configs carry either.
  const char* type_key = Has(rs, "rope_type") ? "rope_type" : "type";
  if (!Has(rs, type_key) || !rs.at(type_key).is_string()) {
    throw LoadError("config.json: 'rope_scaling' needs a string 'rope_type' (or 'type')");
  }
  std::string type = rs.at(type_key).get<std::string>();
  if (type == "default") return std::nullopt;
  if (type != "llama3" && type != "linear") {
    throw LoadError("config.json: unsupported rope_scaling type '" + type +
                    "'; supported: llama3, linear, default");
  }
  RopeScaling out;
  out.type = type;
  out.factor = OptNumber(rs, "factor", out.factor);
  out.low_freq_factor = OptNumber(rs, "low_freq_factor", out.low_freq_factor);
  out.high_freq_factor = OptNumber(rs, "high_freq_factor", out.high_freq_factor);
  out.original_max_position_embeddings =
      OptInt(rs, "original_max_position_embeddings", out.original_max_position_embeddings);
  if (!(out.factor > 0)) throw LoadError("config.json: rope_scaling 'factor' must be positive");
  if (type == "llama3") {
    if (!(out.low_freq_factor > 0) || !(out.high_freq_factor > out.low_freq_factor)) {
      throw LoadError("config.json: rope_scaling needs 0 < 'low_freq_factor' < 'high_freq_factor'");
    }
    if (out.original_max_position_embeddings <= 0) {
      throw LoadError(
          "config.json: rope_scaling 'original_max_position_embeddings' must be positive");
    }
  }
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
  } catch (const json::parse_error& e) {
    throw LoadError(what + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw LoadError(what + ": expected a JSON object");
  return j;
}

}  // namespace

std::vector<std::string> SupportedArchitectures() {
  std::vector<std::string> names;
  for (const ArchInfo& info : kArchitectures) names.emplace_back(info.name);
  return names;
}

ModelConfig ModelConfig::FromJsonText(const std::string& text) {
  const json j = ParseJsonObject(text, kConfigFile);
  ModelConfig c;

  if (!Has(j, "architectures")) {
    throw LoadError("config.json: missing required key 'architectures'");
  }
  const json& archs = j.at("architectures");
  if (!archs.is_array() || archs.empty() || !archs[0].is_string()) {
    throw LoadError("config.json: key 'architectures' must be a non-empty list of strings");
  }
  c.architecture_name = archs[0].get<std::string>();
  const ArchInfo* info = nullptr;
  for (const ArchInfo& candidate : kArchitectures) {
    if (c.architecture_name == candidate.name) info = &candidate;
  }
  if (info == nullptr) {
    throw LoadError("config.json: unsupported architecture '" + c.architecture_name +
                    "'; supported: " + JoinSupported());
  }
  c.arch = info->arch;
  c.model_type = info->model_type;
  if (Has(j, "model_type") && j.at("model_type").is_string()) {
    c.model_type = j.at("model_type").get<std::string>();
  }

  c.hidden_size = RequireInt(j, "hidden_size");
  c.intermediate_size = RequireInt(j, "intermediate_size");
  c.num_hidden_layers = RequireInt(j, "num_hidden_layers");
  c.num_attention_heads = RequireInt(j, "num_attention_heads");
  c.vocab_size = RequireInt(j, "vocab_size");
  RequirePositive(c.num_attention_heads, "num_attention_heads");
  c.num_key_value_heads = OptInt(j, "num_key_value_heads", c.num_attention_heads);
  if (Has(j, "head_dim")) {
    c.head_dim = RequireInt(j, "head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      throw LoadError("config.json: 'hidden_size' (" + std::to_string(c.hidden_size) +
                      ") is not a multiple of 'num_attention_heads' (" +
                      std::to_string(c.num_attention_heads) + ") and 'head_dim' is not given");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (Has(j, "max_position_embeddings")) {
    c.max_position_embeddings = RequireInt(j, "max_position_embeddings");
  } else {
    c.max_position_embeddings = 4096;
    spdlog::debug("config.json: no max_position_embeddings, assuming {}",
                  c.max_position_embeddings);
  }
  c.rms_norm_eps = OptNumber(j, "rms_norm_eps", 1e-6);
  c.rope_theta = OptNumber(j, "rope_theta", 10000.0);
  c.rope_scaling = ParseRopeScaling(j);
  c.tie_word_embeddings = OptBool(j, "tie_word_embeddings", false);

  switch (c.arch) {
    case Architecture::kQwen2:
      c.qkv_bias = true;
      c.o_bias = false;
      c.mlp_bias = false;
      // Qwen2 configs always carry sliding_window; it applies only with use_sliding_window.
      if (OptBool(j, "use_sliding_window", false)) {
        c.sliding_window = RequireInt(j, "sliding_window");
        // Hugging Face's Qwen2Config defaults max_window_layers to 28.
        c.window_from_layer = OptInt(j, "max_window_layers", 28);
      }
      break;
    case Architecture::kLlama: {
      const bool attention_bias = OptBool(j, "attention_bias", false);
      c.qkv_bias = attention_bias;
      c.o_bias = attention_bias;
      c.mlp_bias = OptBool(j, "mlp_bias", false);
      break;
    }
    case Architecture::kMistral:
      if (Has(j, "sliding_window")) c.sliding_window = RequireInt(j, "sliding_window");
      break;
  }

  if (Has(j, "bos_token_id")) c.bos_token_id = RequireInt(j, "bos_token_id");
  c.eos_token_ids = TokenIdList(j, "eos_token_id", kConfigFile);
  if (Has(j, "torch_dtype") && j.at("torch_dtype").is_string()) {
    c.torch_dtype = j.at("torch_dtype").get<std::string>();
  }

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
    AppendUnique(c.eos_token_ids, TokenIdList(g, "eos_token_id", gen_path));
    if (!c.bos_token_id && Has(g, "bos_token_id") && g.at("bos_token_id").is_number_integer()) {
      c.bos_token_id = g.at("bos_token_id").get<int64_t>();
    }
  }
  return c;
}

std::string ModelConfig::ToJsonText() const {
  const ArchInfo& info = InfoFor(arch);
  // Some field combinations have no HF spelling; refuse rather than write a config that
  // would load differently.
  if (arch == Architecture::kQwen2 && (!qkv_bias || o_bias || mlp_bias)) {
    throw Error(ErrorKind::kInternal, "Qwen2 configs always have q/k/v bias and nothing else");
  }
  if (arch == Architecture::kLlama && qkv_bias != o_bias) {
    throw Error(ErrorKind::kInternal, "Llama attention_bias covers q/k/v and o together");
  }
  if (arch == Architecture::kMistral && (qkv_bias || o_bias || mlp_bias)) {
    throw Error(ErrorKind::kInternal, "Mistral has no biases");
  }
  if (arch == Architecture::kLlama && sliding_window) {
    throw Error(ErrorKind::kInternal, "Llama has no sliding window");
  }

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
  if (rope_scaling) {
    json rs;
    rs["rope_type"] = rope_scaling->type;
    rs["factor"] = rope_scaling->factor;
    if (rope_scaling->type == "llama3") {
      rs["low_freq_factor"] = rope_scaling->low_freq_factor;
      rs["high_freq_factor"] = rope_scaling->high_freq_factor;
      rs["original_max_position_embeddings"] = rope_scaling->original_max_position_embeddings;
    }
    j["rope_scaling"] = rs;
  } else {
    j["rope_scaling"] = nullptr;
  }
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
  const int64_t h = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;

  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
      specs.push_back({p + name + ".weight", {out, in}});
      if (bias) specs.push_back({p + name + ".bias", {out}});
    };
    specs.push_back({p + "input_layernorm.weight", {h}});
    linear("self_attn.q_proj", q_dim, h, c.qkv_bias);
    linear("self_attn.k_proj", kv_dim, h, c.qkv_bias);
    linear("self_attn.v_proj", kv_dim, h, c.qkv_bias);
    linear("self_attn.o_proj", h, q_dim, c.o_bias);
    specs.push_back({p + "post_attention_layernorm.weight", {h}});
    linear("mlp.gate_proj", inter, h, c.mlp_bias);
    linear("mlp.up_proj", inter, h, c.mlp_bias);
    linear("mlp.down_proj", h, inter, c.mlp_bias);
  }
  specs.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, h}});
  return specs;
}

}  // namespace gritserve
