// Human-facing subcommands of the one binary: embed, generate, tokenize and
// make-checkpoint, and health for container health checks. Each prints JSON
// on stdout.
#include "cli.h"

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "gritserve/common/error.h"
#include "gritserve/engine/checkpoint.h"
#include "gritserve/engine/engine.h"
#include "gritserve/engine/engine_flags.h"
#include "gritserve/server/server.h"

namespace gritserve {
namespace {

using nlohmann::json;

// The engine flags of a model subcommand (--model required).
std::shared_ptr<EngineOptions> AddModelFlags(CLI::App* cmd) {
  auto o = std::make_shared<EngineOptions>();
  AddEngineFlags(*cmd, *o, ModelFlag::kRequired, "model directory (Hugging Face layout)");
  return o;
}

void AddEmbedCommand(CLI::App& app, std::function<void()>& action) {
  auto* cmd = app.add_subcommand("embed", "embed texts (bidirectional attention, pooled)");
  auto flags = AddModelFlags(cmd);
  auto texts = std::make_shared<std::vector<std::string>>();
  auto opts = std::make_shared<EmbedOptions>();
  auto pooling = std::make_shared<std::string>("mean");
  auto no_normalize = std::make_shared<bool>(false);
  cmd->add_option("texts", *texts, "texts to embed")->required();
  cmd->add_option("--instruction", opts->instruction, "instruction (excluded from pooling)");
  cmd->add_option("--pooling", *pooling, "mean or last")->check(CLI::IsMember({"mean", "last"}));
  cmd->add_option("--layer", opts->layer, "early exit after N layers");
  cmd->add_option("--dimensions", opts->dimensions, "keep the first N dimensions");
  cmd->add_flag("--no-normalize", *no_normalize, "skip L2 normalisation");
  cmd->add_flag("--raw", opts->raw, "no prompt template; pool over all tokens");
  cmd->callback([=, &action] {
    action = [=] {
      opts->pooling = *pooling == "last" ? Pooling::kLast : Pooling::kMean;
      opts->normalize = !*no_normalize;
      auto engine = Engine::Load(*flags);
      json out = engine->runner().EmbedTexts(*texts, *opts);
      std::cout << out.dump() << "\n";
    };
  });
}

void AddGenerateCommand(CLI::App& app, std::function<void()>& action) {
  auto* cmd = app.add_subcommand("generate", "generate a continuation (causal attention)");
  auto flags = AddModelFlags(cmd);
  auto prompt = std::make_shared<std::string>();
  auto params = std::make_shared<SamplingParams>();
  auto raw = std::make_shared<bool>(false);
  auto stream = std::make_shared<bool>(false);
  cmd->add_option("prompt", *prompt, "prompt text")->required();
  cmd->add_option("--max-tokens", params->max_tokens, "tokens to generate");
  cmd->add_option("--temperature", params->temperature, "0 for greedy");
  cmd->add_option("--top-k", params->top_k, "0: off");
  cmd->add_option("--top-p", params->top_p, "1: off");
  cmd->add_option("--seed", params->seed, "sampling seed");
  cmd->add_option("--stop", params->stop, "stop string (repeatable)");
  cmd->add_flag("--ignore-eos", params->ignore_eos, "keep generating past EOS");
  cmd->add_flag("--raw", *raw, "no prompt template");
  cmd->add_flag("--stream", *stream, "print text to stderr as it is generated");
  cmd->callback([=, &action] {
    action = [=] {
      auto engine = Engine::Load(*flags);
      TextCallback cb;
      if (*stream)
        cb = [](const std::string& piece) {
          std::cerr << piece << std::flush;
          return true;
        };
      GenerateResult r =
          engine->runner().Generate(engine->front().EncodeGenerate(*prompt, *raw), *params, cb);
      if (*stream) std::cerr << "\n";
      const json out = GenerateJson(r, /*return_tokens=*/true);
      std::cout << out.dump() << "\n";
    };
  });
}

void AddTokenizeCommand(CLI::App& app, std::function<void()>& action) {
  auto* cmd = app.add_subcommand("tokenize", "show the token ids of a text");
  auto model = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto no_special = std::make_shared<bool>(false);
  cmd->add_option("--model", *model, "model directory")->required();
  cmd->add_option("text", *text, "text")->required();
  cmd->add_flag("--no-special", *no_special, "do not parse special tokens in the text");
  cmd->callback([=, &action] {
    action = [=] {
      auto tok = Tokenizer::FromDirectory(*model);
      json tokens = json::array();
      for (const TokenSpan& s : tok->EncodeWithOffsets(*text, !*no_special)) {
        tokens.push_back({{"id", s.id},
                          {"text", tok->Decode({s.id})},
                          {"special", tok->IsSpecial(s.id)},
                          {"start", s.start},
                          {"stop", s.stop}});
      }
      std::cout << tokens.dump() << "\n";
    };
  });
}

void AddHealthCommand(CLI::App& app, std::function<void()>& action) {
  // For container health checks: the runtime image has no curl.
  auto* cmd = app.add_subcommand("health", "exit 0 when a running server's /health is 200");
  auto host = std::make_shared<std::string>("127.0.0.1");
  auto port = std::make_shared<int>(8080);
  auto timeout = std::make_shared<double>(5);
  cmd->add_option("--host", *host, "server address")->capture_default_str();
  cmd->add_option("--port", *port, "server port")
      ->envname("GRITSERVE_PORT")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  cmd->add_option("--timeout", *timeout, "seconds to wait")->capture_default_str();
  cmd->callback([=, &action] {
    action = [=] {
      const auto [status, body] = ProbeHealth(*host, *port, *timeout);
      if (status != 200) {
        throw Error(ErrorKind::kUnavailable,
                    "/health answered " + std::to_string(status) + ": " + body);
      }
      std::cout << body << "\n";
    };
  });
}

void AddMakeCheckpointCommand(CLI::App& app, std::function<void()>& action) {
  auto* cmd = app.add_subcommand("make-checkpoint",
                                 "write a random-weight checkpoint (for tests and demos)");
  auto out = std::make_shared<std::string>();
  auto preset = std::make_shared<std::string>("tiny");
  auto dtype = std::make_shared<std::string>("f32");
  auto seed = std::make_shared<uint64_t>(0);
  auto shard = std::make_shared<bool>(false);
  cmd->add_option("--out", *out, "output directory")->required();
  cmd->add_option("--preset", *preset, "shape preset")
      ->check(CLI::IsMember(CheckpointPresetNames()));
  cmd->add_option("--dtype", *dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--seed", *seed, "random seed");
  cmd->add_flag("--shard", *shard, "write sharded safetensors with an index");
  cmd->callback([=, &action] {
    action = [=] {
      CheckpointSpec spec = CheckpointPreset(*preset);
      spec.dtype = *dtype == "bf16" ? DType::kBF16 : DType::kF32;
      spec.seed = *seed;
      spec.shard = *shard;
      WriteCheckpoint(*out, spec);
      std::cout << json({{"path", *out}, {"preset", *preset}}).dump() << "\n";
    };
  });
}

}  // namespace

void AddCliSubcommands(CLI::App& app, std::function<void()>& action) {
  AddEmbedCommand(app, action);
  AddGenerateCommand(app, action);
  AddTokenizeCommand(app, action);
  AddHealthCommand(app, action);
  AddMakeCheckpointCommand(app, action);
}

}  // namespace gritserve
