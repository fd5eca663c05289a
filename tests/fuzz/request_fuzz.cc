// Request bodies through every route's parsing (src/server/requests.h), as
// each handler runs it up to the scheduler, plus the front end's own checks
// that the runner applies before computing. The engine is the tiny Qwen2
// fixture, loaded once. One input is one body, tried on every route.
#include <functional>
#include <memory>
#include <string>

#include "fuzz_util.h"
#include "requests.h"
#include "server_context.h"

namespace gritserve {
namespace {

using fuzz::Check;
using http::json;

ServerContext& Context() {
  static ServerContext* ctx = [] {
    auto* c = new ServerContext();
    c->options.engine.model_dir = fuzz::Fixture("qwen2-tiny");
    c->options.engine.threads = 1;
    c->options.engine.cache_bytes = 1 << 20;
    c->engine = Engine::Load(c->options.engine);
    return c;
  }();
  return *ctx;
}

void CheckPrompts(const ServerContext& ctx, const std::vector<EncodedPrompt>& prompts) {
  const int64_t vocab = ctx.front().config().vocab_size;
  for (const EncodedPrompt& p : prompts) {
    Check(p.text_begin <= p.text_end && p.text_end <= p.ids.size(), "text span inside the ids");
    Check(static_cast<int64_t>(p.ids.size()) <= ctx.max_input_tokens(), "prompt within limit");
    for (int32_t id : p.ids) Check(id >= 0 && id < vocab, "prompt id inside the vocabulary");
  }
}

void Embed(const ServerContext& ctx, const JsonFields& f, const char* input_key) {
  EmbedRequest r = ParseEmbedOptions(f, ctx);
  http::Inputs in =
      http::ParseInputs(f, input_key, ctx.options.max_inputs, ctx.front().config().vocab_size);
  std::vector<std::string> ids;
  bool cache = false;
  if (std::string(input_key) == "inputs") {  // /embed's own fields
    ids = ParseCacheIds(f, ctx, in.size());
    cache = f.Bool("cache").value_or(!ids.empty());
  }
  const std::vector<EncodedPrompt> prompts = Encode(ctx, in, r);
  CheckPrompts(ctx, prompts);
  ctx.front().ValidateEmbed(prompts, r.options, cache ? EmbedStore::kKeep : EmbedStore::kNone,
                            ids);
}

void Rerank(const ServerContext& ctx, const JsonFields& f, const char* docs_key) {
  const std::string query = f.RequireString("query");
  const std::vector<Doc> docs = ParseDocs(f, docs_key, ctx.options.max_inputs);
  EmbedRequest r = ParseEmbedOptions(f, ctx);
  http::RequireUtf8(query, "query");
  http::Inputs in;
  in.texts.push_back(query);
  for (const Doc& d : docs) {
    if (d.is_id) {
      ctx.front().StoredPrompt(d.value);  // nothing is stored: NotFound
      Check(false, "an id found in an empty store");
    }
    in.texts.push_back(d.value);
  }
  CheckPrompts(ctx, Encode(ctx, in, r));
}

void Tokenize(const ServerContext& ctx, const JsonFields& f) {
  const json lists = TokenizeResponse(ctx, f);
  const auto texts = f.StringList("inputs", ctx.options.max_inputs);
  Check(texts && lists.size() == texts->size(), "one token list per input");
  for (size_t i = 0; i < lists.size(); ++i) {
    for (const json& t : lists[i]) {
      Check(t["start"].get<size_t>() <= t["stop"].get<size_t>() &&
                t["stop"].get<size_t>() <= (*texts)[i].size(),
            "token span inside the text");
    }
  }
}

void Detokenize(const ServerContext& ctx, const JsonFields& f) {
  const bool skip = f.Bool("skip_special_tokens").value_or(false);
  auto in = http::ParseInputs(f, "ids", ctx.options.max_inputs,
                              ctx.front().tokenizer().VocabSize());
  for (const auto& ids : in.ids) ctx.front().tokenizer().Decode(ids, skip);
}

void Generate(const ServerContext& ctx, const JsonFields& f, int64_t default_max_tokens,
              const std::function<std::vector<int32_t>()>& prompt) {
  GenRequest r;
  ParseSampling(f, ctx, default_max_tokens, r);
  r.prompt = prompt();
  CheckPrompt(ctx, r.prompt);
  ParseDocuments(f, ctx, r);
  Check(r.params.max_tokens >= 1 && r.params.max_tokens <= ctx.options.max_tokens,
        "max_tokens within its bounds");
  ctx.front().ValidateGenerate({r.prompt, r.params, r.documents, r.positions});
}

// Typed errors are the expected refusals; anything else propagates.
void Try(const std::function<void()>& route) {
  try {
    route();
  } catch (const Error&) {
  }
}

}  // namespace
}  // namespace gritserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gritserve;
  const ServerContext& ctx = Context();
  json body;
  try {
    body = http::ParseBody(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const Error&) {
    return 0;
  }
  const JsonFields f = JsonFields::Request(body);
  Try([&] { Embed(ctx, f, "inputs"); });   // /embed
  Try([&] { Embed(ctx, f, "input"); });    // /v1/embeddings
  Try([&] { Rerank(ctx, f, "texts"); });   // /rerank
  Try([&] { Rerank(ctx, f, "documents"); });  // /v1/rerank
  Try([&] { Tokenize(ctx, f); });
  Try([&] { Detokenize(ctx, f); });
  const bool raw = f.Has("raw") && body["raw"].is_boolean() && body["raw"].get<bool>();
  Try([&] {  // /generate
    Generate(ctx, f, 256, [&] {
      return f.Has("messages") ? ctx.front().EncodeChat(ParseMessages(f))
                               : PromptFrom(f, ctx, "prompt", raw);
    });
  });
  Try([&] { Generate(ctx, f, 16, [&] { return PromptFrom(f, ctx, "prompt", true); }); });
  Try([&] { Generate(ctx, f, 512, [&] { return ctx.front().EncodeChat(ParseMessages(f)); }); });
  return 0;
}
