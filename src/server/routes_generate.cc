// /generate (native), /v1/completions and /v1/chat/completions, with SSE streams.
#include <random>

#include "http_util.h"
#include "server_context.h"

namespace gritserve {
namespace {

using http::json;
using namespace std::chrono_literals;

struct GenRequest {
  std::vector<int32_t> prompt;
  std::vector<ResolvedDocument> documents;
  DocPositions positions = DocPositions::kSequential;
  SamplingParams params;
  bool stream = false;
  bool return_tokens = false;
  bool include_usage = false;
};

void ParseSampling(const json& body, const ServerContext& ctx, int64_t default_max_tokens,
                   GenRequest& r) {
  SamplingParams& p = r.params;
  const int64_t cap = ctx.options.max_tokens;
  auto max_tokens = http::OptInt(body, "max_tokens", 1, cap);
  if (!max_tokens) max_tokens = http::OptInt(body, "max_completion_tokens", 1, cap);
  p.max_tokens = max_tokens.value_or(std::min(default_max_tokens, cap));
  p.temperature = http::OptNumber(body, "temperature", 0.0, 10.0).value_or(1.0);
  p.top_p = http::OptNumber(body, "top_p", 0.0, 1.0).value_or(1.0);
  if (p.top_p <= 0.0) throw Unprocessable("'top_p' must be greater than 0");
  p.top_k = http::OptInt(body, "top_k", 0, ctx.engine->config().vocab_size).value_or(0);
  auto seed = http::OptSeed(body, "seed");
  p.seed = seed ? *seed : std::random_device{}();
  if (auto stop = http::OptStringList(body, "stop", 16)) {
    for (const auto& s : *stop) {
      if (s.empty()) throw Unprocessable("'stop' strings must not be empty");
    }
    p.stop = *stop;
  }
  p.ignore_eos = http::OptBool(body, "ignore_eos").value_or(false);
  if (auto n = http::OptInt(body, "n", 1, 1000); n && *n != 1) {
    throw Unprocessable("'n' must be 1: one choice per request");
  }
  r.stream = http::OptBool(body, "stream").value_or(false);
  r.return_tokens = http::OptBool(body, "return_tokens").value_or(false);
  auto so = body.find("stream_options");
  if (so != body.end() && !so->is_null()) {
    if (!so->is_object()) throw InvalidRequest("'stream_options' must be an object");
    r.include_usage = http::OptBool(*so, "include_usage").value_or(false);
  }
}

// "documents": cached ids (strings or {"id"}) or {"text"} placed before the
// prompt; "kv_source" and "positions" say how. Unknown ids are a 404 naming them.
void ParseDocuments(const json& body, const ServerContext& ctx, GenRequest& r) {
  auto it = body.find("documents");
  const std::string source =
      http::OptString(body, "kv_source").value_or(KvSourceName(ctx.default_kv_source()));
  if (source != "embed" && source != "causal") {
    throw Unprocessable("'kv_source' must be \"embed\" or \"causal\"");
  }
  const std::string positions = http::OptString(body, "positions").value_or("sequential");
  if (positions != "sequential" && positions != "composite") {
    throw Unprocessable("'positions' must be \"sequential\" or \"composite\"");
  }
  if (it == body.end() || it->is_null()) return;
  if (!it->is_array()) throw InvalidRequest("'documents' must be a list");
  if (static_cast<int64_t>(it->size()) > ctx.options.max_inputs) {
    throw Error(ErrorKind::kTooLarge,
                "'documents' has more than " + std::to_string(ctx.options.max_inputs) + " items");
  }
  std::vector<DocumentRef> refs;
  for (const auto& d : *it) {
    DocumentRef ref;
    if (d.is_string()) {
      ref.id = d.get<std::string>();
    } else if (d.is_object() && d.contains("id") && d["id"].is_string()) {
      ref.id = d["id"].get<std::string>();
    } else if (d.is_object() && d.contains("text") && d["text"].is_string()) {
      ref.text = d["text"].get<std::string>();
      http::RequireUtf8(ref.text, "documents");
    } else if (d.is_object() && d.contains("tokens")) {
      http::Inputs in = http::ParseInputs(d, "tokens", 1, ctx.engine->config().vocab_size);
      if (in.ids.size() != 1) throw InvalidRequest("'tokens' must be a list of token ids");
      ref.ids = std::move(in.ids[0]);
    } else {
      throw InvalidRequest(
          "each document must be an id, {\"id\": id}, {\"text\": string} or {\"tokens\": [ids]}");
    }
    if (ref.id.empty() && ref.text.empty() && ref.ids.empty()) {
      throw Unprocessable("a document is empty");
    }
    refs.push_back(std::move(ref));
  }
  r.documents =
      ctx.engine->ResolveDocuments(refs, source == "embed" ? KvSource::kEmbed : KvSource::kCausal);
  r.positions = positions == "composite" ? DocPositions::kComposite : DocPositions::kSequential;
}

void CheckPrompt(const ServerContext& ctx, const std::vector<int32_t>& prompt) {
  if (prompt.empty()) throw Unprocessable("the prompt is empty");
  const int64_t limit = std::min(ctx.max_input_tokens(), ctx.engine->max_context() - 1);
  if (static_cast<int64_t>(prompt.size()) > limit) {
    throw Unprocessable("the prompt has " + std::to_string(prompt.size()) +
                        " tokens, more than the limit of " + std::to_string(limit));
  }
}

std::vector<int32_t> PromptFrom(const json& body, const ServerContext& ctx, const char* key,
                                bool raw) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null())
    throw InvalidRequest(std::string("'") + key + "' is required");
  if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    return ctx.engine->EncodeGenerate((*it)[0].get<std::string>(), raw);  // OpenAI ["text"]
  }
  if (it->is_string()) {
    std::string s = it->get<std::string>();
    http::RequireUtf8(s, key);
    return ctx.engine->EncodeGenerate(s, raw);
  }
  http::Inputs in = http::ParseInputs(body, key, 1, ctx.engine->config().vocab_size);
  if (in.ids.size() != 1) throw Unprocessable(std::string("'") + key + "' must be one prompt");
  return in.ids[0];  // token ids are used as given
}

std::vector<ChatMessage> ParseMessages(const json& body) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty()) {
    throw InvalidRequest("'messages' must be a non-empty list");
  }
  std::vector<ChatMessage> out;
  for (const auto& m : *it) {
    if (!m.is_object()) throw InvalidRequest("each message must be an object");
    auto role = http::OptString(m, "role");
    if (!role) throw InvalidRequest("each message needs a 'role'");
    if (*role != "system" && *role != "user" && *role != "assistant") {
      throw Unprocessable("unsupported role '" + *role + "' (system, user, assistant)");
    }
    std::string content;
    auto c = m.find("content");
    if (c == m.end() || c->is_null()) {
      throw InvalidRequest("each message needs 'content'");
    } else if (c->is_string()) {
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
    out.push_back({*role, content});
  }
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

// Streams the job's text as server-sent events. The stream counts as in flight
// until its last byte, so that draining waits for it.
void StreamEvents(ServerContext& ctx, httplib::Response& res, std::shared_ptr<GenerationJob> job,
                  StreamFormat fmt) {
  res.set_header("Cache-Control", "no-cache");
  ctx.in_flight.fetch_add(1);
  auto started = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [job, fmt, started](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& data) {
          const std::string event = "data: " + data + "\n\n";
          return sink.write(event.data(), event.size());
        };
        if (!*started) {
          *started = true;
          for (const auto& e : fmt.start()) {
            if (!send(Dump(e))) return false;
          }
        }
        bool done = false;
        const std::string text = job->WaitForText(250ms, &done);
        // A failed write means the client went away: the releaser cancels.
        if (!text.empty() && !send(Dump(fmt.piece(text)))) return false;
        if (!done) return true;
        try {
          for (const auto& e : fmt.end(job->Wait())) send(Dump(e));
        } catch (const Error& e) {
          send(Dump({{"error",
                      {{"message", e.what()},
                       {"type", ErrorKindName(e.kind())},
                       {"code", http::StatusFor(e.kind())}}}}));
        } catch (const std::exception& e) {
          send(Dump(
              {{"error", {{"message", e.what()}, {"type", "internal_error"}, {"code", 500}}}}));
        }
        send("[DONE]");
        sink.done();
        return true;
      },
      [job, &ctx](bool success) {
        if (!success) job->Cancel();
        ctx.in_flight.fetch_sub(1);
      });
}

}  // namespace

void AddGenerateRoutes(httplib::Server& server, ServerContext& ctx) {
  server.Post("/generate", GuardedBody(ctx, "/generate", [&](const auto& req, auto& res) {
                json body = http::ParseBody(req.body);
                GenRequest r;
                ParseSampling(body, ctx, 256, r);
                const bool raw = http::OptBool(body, "raw").value_or(false);
                if (body.contains("messages") && !body["messages"].is_null()) {
                  r.prompt = ctx.engine->EncodeChat(ParseMessages(body));
                } else {
                  r.prompt = PromptFrom(body, ctx, "prompt", raw);
                }
                CheckPrompt(ctx, r.prompt);
                ParseDocuments(body, ctx, r);
                auto job =
                    ctx.scheduler->SubmitGenerate(r.prompt, r.params, r.documents, r.positions);
                auto final_json = [return_tokens = r.return_tokens](const GenerateResult& g) {
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
                };
                if (!r.stream) {
                  http::SendJson(res, final_json(job->Wait()));
                  return;
                }
                StreamEvents(ctx, res, job,
                             {[] { return std::vector<json>{}; },
                              [](const std::string& t) {
                                return json{{"text", t}};
                              },
                              [final_json](const GenerateResult& g) {
                                json last = final_json(g);
                                last["text"] = "";
                                last["full_text"] = g.text;
                                return std::vector<json>{last};
                              }});
              }));

  server.Post(
      "/v1/completions", GuardedBody(ctx, "/v1/completions", [&](const auto& req, auto& res) {
        json body = http::ParseBody(req.body);
        http::OptString(body, "model");
        GenRequest r;
        ParseSampling(body, ctx, 16, r);
        // OpenAI completions take the prompt as given (no chat or GritLM wrapping).
        r.prompt = PromptFrom(body, ctx, "prompt", /*raw=*/true);
        CheckPrompt(ctx, r.prompt);
        ParseDocuments(body, ctx, r);
        auto job = ctx.scheduler->SubmitGenerate(r.prompt, r.params, r.documents, r.positions);
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
          GenerateResult g = job->Wait();
          json out = chunk(g.text, OpenAiFinish(g.finish_reason));
          out["usage"] = Usage(g);
          http::SendJson(res, out);
          return;
        }
        const bool include_usage = r.include_usage;
        StreamEvents(ctx, res, job,
                     {[] { return std::vector<json>{}; },
                      [chunk](const std::string& t) { return chunk(t, nullptr); },
                      [chunk, include_usage](const GenerateResult& g) {
                        std::vector<json> events{chunk("", OpenAiFinish(g.finish_reason))};
                        if (include_usage) {
                          json u = chunk("", nullptr);
                          u["choices"] = json::array();
                          u["usage"] = Usage(g);
                          events.push_back(u);
                        }
                        return events;
                      }});
      }));

  server.Post(
      "/v1/chat/completions",
      GuardedBody(ctx, "/v1/chat/completions", [&](const auto& req, auto& res) {
        json body = http::ParseBody(req.body);
        http::OptString(body, "model");
        GenRequest r;
        ParseSampling(body, ctx, 512, r);
        r.prompt = ctx.engine->EncodeChat(ParseMessages(body));
        CheckPrompt(ctx, r.prompt);
        ParseDocuments(body, ctx, r);
        auto job = ctx.scheduler->SubmitGenerate(r.prompt, r.params, r.documents, r.positions);
        const std::string id = http::RandomId("chatcmpl-");
        const int64_t created = http::UnixTime();
        const std::string model = ctx.model_id;
        if (!r.stream) {
          GenerateResult g = job->Wait();
          http::SendJson(res, {{"id", id},
                               {"object", "chat.completion"},
                               {"created", created},
                               {"model", model},
                               {"choices",
                                {{{"index", 0},
                                  {"message", {{"role", "assistant"}, {"content", g.text}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", OpenAiFinish(g.finish_reason)}}}},
                               {"usage", Usage(g)}});
          return;
        }
        auto chunk = [id, created, model](json delta, json finish) {
          return json{{"id", id},
                      {"object", "chat.completion.chunk"},
                      {"created", created},
                      {"model", model},
                      {"choices",
                       {{{"index", 0},
                         {"delta", delta},
                         {"logprobs", nullptr},
                         {"finish_reason", finish}}}}};
        };
        const bool include_usage = r.include_usage;
        StreamEvents(
            ctx, res, job,
            {[chunk] {
               return std::vector<json>{chunk({{"role", "assistant"}, {"content", ""}}, nullptr)};
             },
             [chunk](const std::string& t) {
               return chunk({{"content", t}}, nullptr);
             },
             [chunk, include_usage](const GenerateResult& g) {
               std::vector<json> events{chunk(json::object(), OpenAiFinish(g.finish_reason))};
               if (include_usage) {
                 json u = chunk(json::object(), nullptr);
                 u["choices"] = json::array();
                 u["usage"] = Usage(g);
                 events.push_back(u);
               }
               return events;
             }});
      }));
}

}  // namespace gritserve
