// /generate (native), /v1/completions and /v1/chat/completions, with SSE streams.
#include <random>

#include "collections_api.h"
#include "http_util.h"
#include "requests.h"
#include "server_context.h"

namespace gritserve {
namespace {

using http::json;
using namespace std::chrono_literals;

}  // namespace

void ParseSampling(const JsonFields& f, const ServerContext& ctx, int64_t default_max_tokens,
                   GenRequest& r) {
  SamplingParams& p = r.params;
  const int64_t cap = ctx.options.max_tokens;
  auto max_tokens = f.Int("max_tokens", 1, cap);
  const auto max_completion_tokens = f.Int("max_completion_tokens", 1, cap);  // checked either way
  if (!max_tokens) max_tokens = max_completion_tokens;
  p.max_tokens = max_tokens.value_or(std::min(default_max_tokens, cap));
  p.temperature = f.Number("temperature", 0.0, 10.0).value_or(1.0);
  p.top_p = f.Number("top_p", 0.0, 1.0).value_or(1.0);
  if (p.top_p <= 0.0) throw Unprocessable("'top_p' must be greater than 0");
  p.top_k = f.Int("top_k", 0, ctx.front().config().vocab_size).value_or(0);
  auto seed = f.Uint("seed");
  p.seed = seed ? *seed : std::random_device{}();
  if (auto stop = f.StringList("stop", 16)) {
    for (const auto& s : *stop) http::RequireUtf8(s, "stop");
    for (const auto& s : *stop) {
      if (s.empty()) throw Unprocessable("'stop' strings must not be empty");
    }
    p.stop = *stop;
  }
  p.ignore_eos = f.Bool("ignore_eos").value_or(false);
  if (auto n = f.Int("n", 1, 1000); n && *n != 1) {
    throw Unprocessable("'n' must be 1: one choice per request");
  }
  r.stream = f.Bool("stream").value_or(false);
  r.return_tokens = f.Bool("return_tokens").value_or(false);
  if (const json* so = f.Find("stream_options")) {
    if (!so->is_object()) throw InvalidRequest("'stream_options' must be an object");
    r.include_usage = f.Nested(*so).Bool("include_usage").value_or(false);
  }
}

namespace {

DocumentRef ParseDocumentRef(const JsonFields& f, const json& d, const ServerContext& ctx) {
  DocumentRef ref;
  if (d.is_string()) {
    ref.id = d.get<std::string>();
  } else if (d.is_object() && d.contains("id") && d["id"].is_string()) {
    ref.id = d["id"].get<std::string>();
  } else if (d.is_object() && d.contains("text") && d["text"].is_string()) {
    ref.text = d["text"].get<std::string>();
    http::RequireUtf8(ref.text, "documents");
  } else if (d.is_object() && d.contains("tokens")) {
    // contains, not Has: {"tokens": null} is a document missing its tokens, not an unknown shape.
    http::Inputs in = http::ParseInputs(f.Nested(d), "tokens", 1, ctx.front().config().vocab_size);
    if (in.ids.size() != 1) throw InvalidRequest("'tokens' must be a list of token ids");
    ref.ids = std::move(in.ids[0]);
  } else {
    throw InvalidRequest(
        "each document must be an id, {\"id\": id}, {\"text\": string} or {\"tokens\": [ids]}");
  }
  if (ref.id.empty() && ref.text.empty() && ref.ids.empty()) {
    throw Unprocessable("a document is empty");
  }
  return ref;
}

}  // namespace

// "documents": cached ids (strings or {"id"}) or {"text"} placed before the
// prompt; "kv_source" and "positions" say how. Unknown ids are a 404 naming them.
void ParseDocuments(const JsonFields& f, const ServerContext& ctx, GenRequest& r) {
  const std::string source = f.String("kv_source").value_or(KvSourceName(ctx.default_kv_source()));
  if (source != "embed" && source != "causal") {
    throw Unprocessable("'kv_source' must be \"embed\" or \"causal\"");
  }
  const std::string positions = f.String("positions").value_or("sequential");
  if (positions != "sequential" && positions != "composite") {
    throw Unprocessable("'positions' must be \"sequential\" or \"composite\"");
  }
  const json* docs = f.Find("documents");
  if (docs == nullptr) return;
  if (!docs->is_array()) throw InvalidRequest("'documents' must be a list");
  if (static_cast<int64_t>(docs->size()) > ctx.options.max_inputs) {
    throw Error(ErrorKind::kTooLarge,
                "'documents' has more than " + std::to_string(ctx.options.max_inputs) + " items");
  }
  std::vector<DocumentRef> refs;
  const bool parse_special = f.Bool("parse_special_tokens").value_or(false);
  for (const auto& d : *docs) {
    refs.push_back(ParseDocumentRef(f, d, ctx));
    refs.back().parse_special = parse_special;
  }
  r.documents =
      ctx.front().ResolveDocuments(refs, source == "embed" ? KvSource::kEmbed : KvSource::kCausal);
  r.positions = positions == "composite" ? DocPositions::kComposite : DocPositions::kSequential;
}

void CheckPrompt(const ServerContext& ctx, const std::vector<int32_t>& prompt) {
  if (prompt.empty()) throw Unprocessable("the prompt is empty");
  const int64_t limit = std::min(ctx.max_input_tokens(), ctx.front().max_context() - 1);
  if (static_cast<int64_t>(prompt.size()) > limit) {
    throw Unprocessable("the prompt has " + std::to_string(prompt.size()) +
                        " tokens, more than the limit of " + std::to_string(limit));
  }
}

// A raw prompt is used as given, special tokens included; inside the template
// it is literal text unless the request sets "parse_special_tokens".
std::vector<int32_t> PromptFrom(const JsonFields& f, const ServerContext& ctx, const char* key,
                                bool raw) {
  const json* p = f.Find(key);
  if (p == nullptr) throw f.Missing(key);
  const bool parse_special = f.Bool("parse_special_tokens").value_or(false);
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    // OpenAI ["text"]
    return ctx.front().EncodeGenerate((*p)[0].get<std::string>(), raw, parse_special);
  }
  if (p->is_string()) {
    std::string s = p->get<std::string>();
    http::RequireUtf8(s, key);
    return ctx.front().EncodeGenerate(s, raw, parse_special);
  }
  http::Inputs in = http::ParseInputs(f, key, 1, ctx.front().config().vocab_size);
  if (in.ids.size() != 1) throw Unprocessable(std::string("'") + key + "' must be one prompt");
  return in.ids[0];  // token ids are used as given
}

namespace {

std::string MessageContent(const JsonFields& m) {
  const json* c = m.Find("content");
  if (c == nullptr) throw InvalidRequest("each message needs 'content'");
  std::string content;
  if (c->is_string()) {
    content = c->get<std::string>();
  } else if (c->is_array()) {
    for (const auto& part : *c) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        throw Unprocessable("only text content parts are supported");
      }
      content += part["text"].get<std::string>();
    }
  } else {
    throw InvalidRequest("'content' must be a string or a list of text parts");
  }
  http::RequireUtf8(content, "content");
  return content;
}

}  // namespace

std::vector<ChatMessage> ParseMessages(const JsonFields& f) {
  const json* messages = f.Find("messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    throw InvalidRequest("'messages' must be a non-empty list");
  }
  std::vector<ChatMessage> out;
  for (const auto& m : *messages) {
    if (!m.is_object()) throw InvalidRequest("each message must be an object");
    const JsonFields mf = f.Nested(m);
    auto role = mf.String("role");
    if (!role) throw InvalidRequest("each message needs a 'role'");
    if (*role != "system" && *role != "user" && *role != "assistant") {
      throw Unprocessable("unsupported role '" + *role + "' (system, user, assistant)");
    }
    out.push_back({*role, MessageContent(mf)});
  }
  return out;
}

namespace {

// The end shared by the three routes, once each has its prompt: limits,
// documents, retrieval ("retrieve": its documents follow any given ones),
// then the queue (which may refuse with kQueueFull).
auto Submit(ServerContext& ctx, const JsonFields& f, GenRequest& r,
            std::optional<Retrieval>* retrieval) {
  CheckPrompt(ctx, r.prompt);
  ParseDocuments(f, ctx, r);
  if (f.Has("retrieve")) {
    *retrieval = Retrieve(ctx, f);
    for (const auto& d : (*retrieval)->documents) r.documents.push_back(d);
  }
  return ctx.scheduler->SubmitGenerate({r.prompt, r.params, r.documents, r.positions});
}

// "retrieved" and timings.retrieval_ms, when the request retrieved.
json WithRetrieval(json out, const std::optional<Retrieval>& retrieval) {
  if (!retrieval) return out;
  out["retrieved"] = RetrievedJson(*retrieval);
  if (out.contains("timings")) out["timings"]["retrieval_ms"] = retrieval->ms;
  return out;
}

std::string OpenAiFinish(const std::string& reason) {
  return reason == "length" ? "length" : "stop";
}

json Usage(const GenerateResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

// How a route turns a generation into SSE events.
struct StreamFormat {
  std::function<std::vector<json>()> start;
  std::function<json(const std::string&)> piece;
  std::function<std::vector<json>(const GenerateResult&)> end;
};

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The last events of a stream: the format's end, or the error the generation
// ended with (the status line went out long before).
std::vector<json> FinalEvents(const StreamFormat& fmt,
                              const std::function<GenerateResult()>& wait) {
  try {
    return fmt.end(wait());
  } catch (const Error& e) {
    return {http::ErrorBody(e)};
  } catch (const std::exception& e) {
    return {http::ErrorBody(Error(ErrorKind::kInternal, e.what()))};
  }
}

// Streams the sequence's text as server-sent events. The stream counts as in
// flight until its last byte, so that draining waits for it; a client that
// goes away (a failed write) cancels the sequence.
template <typename SequencePtr>
void StreamEvents(ServerContext& ctx, http::Response& res, SequencePtr seq, StreamFormat fmt) {
  res.SetHeader("Cache-Control", "no-cache");
  res.content_type = "text/event-stream";
  const auto deadline = RequestDeadline(ctx);
  res.stream = [seq, fmt, deadline, &ctx, held = InFlight(ctx)](http::ChunkSink& sink) {
    auto send = [&](const std::string& data) { return sink.Write("data: " + data + "\n\n"); };
    for (const auto& e : fmt.start()) {
      if (!send(Dump(e))) return seq->Cancel();
    }
    bool done = false;
    while (!done) {
      const std::string text = seq->WaitForText(250ms, &done);
      if (!text.empty() && !send(Dump(fmt.piece(text)))) return seq->Cancel();
      if (!done && std::chrono::steady_clock::now() >= deadline) {
        seq->Cancel();
        send(Dump(http::ErrorBody(RequestTimedOut(ctx))));
        send("[DONE]");
        return;
      }
    }
    for (const auto& e : FinalEvents(fmt, [&seq] { return seq->Wait(); })) send(Dump(e));
    send("[DONE]");
  };
}

// ---- /generate ----

void HandleGenerate(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  GenRequest r;
  ParseSampling(f, ctx, 256, r);
  const bool raw = f.Bool("raw").value_or(false);
  if (f.Has("messages")) {
    r.prompt =
        ctx.front().EncodeChat(ParseMessages(f), f.Bool("parse_special_tokens").value_or(false));
  } else {
    r.prompt = PromptFrom(f, ctx, "prompt", raw);
  }
  std::optional<Retrieval> retrieval;
  auto seq = Submit(ctx, f, r, &retrieval);
  const bool return_tokens = r.return_tokens;
  if (!r.stream) {
    http::SendJson(res,
                   WithRetrieval(GenerateJson(AwaitResult(ctx, *seq), return_tokens), retrieval));
    return;
  }
  StreamEvents(ctx, res, seq,
               {[retrieval] {
                  // The first event names the retrieved documents, before any text.
                  if (!retrieval) return std::vector<json>{};
                  return std::vector<json>{{{"retrieved", RetrievedJson(*retrieval)}}};
                },
                [](const std::string& t) {
                  return json{{"text", t}};
                },
                [return_tokens, retrieval](const GenerateResult& g) {
                  json last = WithRetrieval(GenerateJson(g, return_tokens), retrieval);
                  last["text"] = "";
                  last["full_text"] = g.text;
                  return std::vector<json>{last};
                }});
}

// ---- OpenAI ----

// With stream_options.include_usage, a last chunk with no choices carries the usage.
std::vector<json> OpenAiEnd(json last, json usage_chunk, bool include_usage,
                            const GenerateResult& g) {
  std::vector<json> events{std::move(last)};
  if (include_usage) {
    usage_chunk["choices"] = json::array();
    usage_chunk["usage"] = Usage(g);
    events.push_back(std::move(usage_chunk));
  }
  return events;
}

void HandleCompletions(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  f.String("model");  // any model name is accepted; type-checked only
  GenRequest r;
  ParseSampling(f, ctx, 16, r);
  // OpenAI completions take the prompt as given (no chat or GritLM wrapping).
  r.prompt = PromptFrom(f, ctx, "prompt", /*raw=*/true);
  std::optional<Retrieval> retrieval;
  auto seq = Submit(ctx, f, r, &retrieval);
  const std::string id = http::RandomId("cmpl-");
  const int64_t created = http::UnixTime();
  auto chunk = [id, created, model = ctx.model_id](const std::string& text, json finish) {
    return json{
        {"id", id},
        {"object", "text_completion"},
        {"created", created},
        {"model", model},
        {"choices",
         {{{"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}}}}};
  };
  if (!r.stream) {
    GenerateResult g = AwaitResult(ctx, *seq);
    json out = chunk(g.text, OpenAiFinish(g.finish_reason));
    out["usage"] = Usage(g);
    http::SendJson(res, WithRetrieval(out, retrieval));
    return;
  }
  const bool include_usage = r.include_usage;
  StreamEvents(ctx, res, seq,
               {[chunk, retrieval] {
                  if (!retrieval) return std::vector<json>{};
                  return std::vector<json>{WithRetrieval(chunk("", nullptr), retrieval)};
                },
                [chunk](const std::string& t) { return chunk(t, nullptr); },
                [chunk, include_usage](const GenerateResult& g) {
                  return OpenAiEnd(chunk("", OpenAiFinish(g.finish_reason)), chunk("", nullptr),
                                   include_usage, g);
                }});
}

void HandleChatCompletions(ServerContext& ctx, const http::Request& req,
                           http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  f.String("model");  // any model name is accepted; type-checked only
  GenRequest r;
  ParseSampling(f, ctx, 512, r);
  // Message content is literal text unless the request opts in: a user cannot
  // spell a control token such as "<|im_start|>" into the conversation.
  r.prompt =
      ctx.front().EncodeChat(ParseMessages(f), f.Bool("parse_special_tokens").value_or(false));
  std::optional<Retrieval> retrieval;
  auto seq = Submit(ctx, f, r, &retrieval);
  const std::string id = http::RandomId("chatcmpl-");
  const int64_t created = http::UnixTime();
  const std::string model = ctx.model_id;
  if (!r.stream) {
    GenerateResult g = AwaitResult(ctx, *seq);
    const json out = {{"id", id},
                      {"object", "chat.completion"},
                      {"created", created},
                      {"model", model},
                      {"choices",
                       {{{"index", 0},
                         {"message", {{"role", "assistant"}, {"content", g.text}}},
                         {"logprobs", nullptr},
                         {"finish_reason", OpenAiFinish(g.finish_reason)}}}},
                      {"usage", Usage(g)}};
    http::SendJson(res, WithRetrieval(out, retrieval));
    return;
  }
  auto chunk = [id, created, model](json delta, json finish) {
    return json{
        {"id", id},
        {"object", "chat.completion.chunk"},
        {"created", created},
        {"model", model},
        {"choices",
         {{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish}}}}};
  };
  const bool include_usage = r.include_usage;
  StreamEvents(
      ctx, res, seq,
      {[chunk, retrieval] {
         return std::vector<json>{
             WithRetrieval(chunk({{"role", "assistant"}, {"content", ""}}, nullptr), retrieval)};
       },
       [chunk](const std::string& t) {
         return chunk({{"content", t}}, nullptr);
       },
       [chunk, include_usage](const GenerateResult& g) {
         return OpenAiEnd(chunk(json::object(), OpenAiFinish(g.finish_reason)),
                          chunk(json::object(), nullptr), include_usage, g);
       }});
}

}  // namespace

nlohmann::json GenerateJson(const GenerateResult& g, bool return_tokens) {
  json out = {{"text", g.text},
              {"finish_reason", g.finish_reason},
              {"usage",
               {{"prompt_tokens", g.prompt_tokens},
                {"cached_tokens", g.cached_tokens},
                {"completion_tokens", g.completion_tokens}}},
              {"timings",
               {{"ttft_ms", g.ttft_ms},
                {"prefill_ms", g.prefill_ms},
                {"documents_ms", g.documents_ms},
                {"decode_ms", g.decode_ms}}}};
  if (return_tokens) out["tokens"] = g.tokens;
  return out;
}

void AddGenerateRoutes(Routes& routes, ServerContext& ctx) {
  const std::pair<const char*, void (*)(ServerContext&, const http::Request&, http::Response&)>
      posts[] = {{"/generate", HandleGenerate},
                 {"/v1/completions", HandleCompletions},
                 {"/v1/chat/completions", HandleChatCompletions}};
  for (const auto& [path, fn] : posts) {
    routes.Add({"POST", path, path, false, true, true,
                [&ctx, fn = fn](const http::Request& req, http::Response& res) { fn(ctx, req, res); }});
  }
}

}  // namespace gritserve
