// /embed, /v1/embeddings, /rerank, /v1/rerank, /tokenize, /detokenize.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "http_util.h"
#include "requests.h"
#include "server_context.h"

namespace gritserve {
namespace {

using http::json;

}  // namespace

// Fields shared by /embed, /v1/embeddings and the rerank routes.
EmbedRequest ParseEmbedOptions(const JsonFields& f, const ServerContext& ctx) {
  EmbedRequest r;
  EmbedOptions& o = r.options;
  o.instruction = f.String("instruction").value_or("");
  http::RequireUtf8(o.instruction, "instruction");
  const std::string pooling = f.String("pooling").value_or("mean");
  if (pooling != "mean" && pooling != "last") {
    throw Unprocessable("'pooling' must be \"mean\" or \"last\"");
  }
  o.pooling = pooling == "last" ? Pooling::kLast : Pooling::kMean;
  const ModelConfig& config = ctx.front().config();
  o.layer = f.Int("layer", 1, config.num_hidden_layers).value_or(-1);
  o.normalize = f.Bool("normalize").value_or(true);
  o.dimensions = f.Int("dimensions", 1, config.hidden_size).value_or(0);
  o.raw = f.Bool("raw").value_or(false);
  o.parse_special = f.Bool("parse_special_tokens").value_or(false);
  r.truncate = f.Bool("truncate").value_or(false);
  std::string dir = f.String("truncation_direction").value_or("right");
  std::transform(dir.begin(), dir.end(), dir.begin(), ::tolower);
  if (dir != "right" && dir != "left") {
    throw Unprocessable("'truncation_direction' must be \"right\" or \"left\"");
  }
  r.truncate_left = dir == "left";
  return r;
}

namespace {

// Applies the token limit: truncates the {text} span when allowed, else 422.
void ApplyLimit(EncodedPrompt& p, size_t index, int64_t limit, const EmbedRequest& r) {
  const int64_t n = static_cast<int64_t>(p.ids.size());
  if (n <= limit) return;
  const std::string what = "input " + std::to_string(index) + " has " + std::to_string(n) +
                           " tokens, more than the limit of " + std::to_string(limit);
  if (!r.truncate) throw Unprocessable(what + " (set \"truncate\": true to cut it)");
  const size_t excess = static_cast<size_t>(n - limit);
  if (p.text_end - p.text_begin <= excess) throw Unprocessable(what + ", even without its text");
  auto first = p.ids.begin() +
               static_cast<std::ptrdiff_t>(r.truncate_left ? p.text_begin : p.text_end - excess);
  p.ids.erase(first, first + static_cast<std::ptrdiff_t>(excess));
  p.text_end -= excess;
}

}  // namespace

std::vector<EncodedPrompt> Encode(const ServerContext& ctx, const http::Inputs& in,
                                  const EmbedRequest& r) {
  std::vector<EncodedPrompt> prompts;
  prompts.reserve(in.size());
  for (const auto& t : in.texts) prompts.push_back(ctx.front().EncodeEmbed(t, r.options));
  for (const auto& ids : in.ids) prompts.push_back(ctx.front().EncodeEmbedIds(ids));
  for (size_t i = 0; i < prompts.size(); ++i) {
    ApplyLimit(prompts[i], i, ctx.max_input_tokens(), r);
  }
  return prompts;
}

namespace {

int64_t CountTokens(const std::vector<EncodedPrompt>& prompts) {
  int64_t n = 0;
  for (const auto& p : prompts) n += static_cast<int64_t>(p.ids.size());
  return n;
}

std::vector<std::vector<float>> RunEmbed(ServerContext& ctx, std::vector<EncodedPrompt> prompts,
                                         const EmbedOptions& o) {
  return AwaitResult(ctx, ctx.scheduler->SubmitEmbed(std::move(prompts), o, EmbedStore::kNone, {},
                                                     RequestDeadline(ctx)));
}

float Dot(const std::vector<float>& a, const std::vector<float>& b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0f);
}

Doc ParseDoc(const json& d, const char* field) {
  if (d.is_string()) return {d.get<std::string>(), false};
  if (d.is_object() && d.contains("text") && d["text"].is_string()) {
    return {d["text"].get<std::string>(), false};
  }
  if (d.is_object() && d.contains("id") && d["id"].is_string()) {
    return {d["id"].get<std::string>(), true};
  }
  throw InvalidRequest(std::string("each of '") + field +
                       "' must be a string, {\"text\": string} or {\"id\": cached id}");
}

}  // namespace

std::vector<Doc> ParseDocs(const JsonFields& f, const char* field, int64_t max_items) {
  const json* it = f.Find(field);
  if (it == nullptr) throw f.Missing(field);
  if (!it->is_array() || it->empty()) {
    throw InvalidRequest(std::string("'") + field + "' must be a non-empty list");
  }
  if (static_cast<int64_t>(it->size()) > max_items) {
    throw Error(ErrorKind::kTooLarge, std::string("'") + field + "' has more than " +
                                          std::to_string(max_items) + " items");
  }
  std::vector<Doc> docs;
  for (const auto& d : *it) {
    docs.push_back(ParseDoc(d, field));
    http::RequireUtf8(docs.back().value, field);
  }
  return docs;
}

namespace {

std::string DocText(const ServerContext& ctx, const Doc& d) {
  if (!d.is_id) return d.value;
  EncodedPrompt p = ctx.front().StoredPrompt(d.value);
  return ctx.front().tokenizer().Decode(
      std::vector<int32_t>(p.ids.begin() + static_cast<std::ptrdiff_t>(p.text_begin),
                           p.ids.begin() + static_cast<std::ptrdiff_t>(p.text_end)),
      /*skip_special=*/true);
}

// Cosine scores of documents against a query, GritLM style: the query carries
// the instruction, the documents are embedded without one.
std::vector<float> Rerank(ServerContext& ctx, const JsonFields& f, const std::string& query,
                          const std::vector<Doc>& docs, int64_t* tokens) {
  EmbedRequest r = ParseEmbedOptions(f, ctx);
  r.options.normalize = true;
  r.options.dimensions = 0;
  http::RequireUtf8(query, "query");
  if (query.empty()) throw Unprocessable("'query' is empty");
  http::Inputs in;
  in.texts.push_back(query);
  std::vector<EncodedPrompt> prompts = Encode(ctx, in, r);
  EmbedRequest doc_req = r;
  doc_req.options.instruction.clear();
  bool any_id = false;
  for (const Doc& d : docs) {
    if (d.is_id) {
      // A cached id: its stored embedding is reused, nothing is re-encoded.
      prompts.push_back(ctx.front().StoredPrompt(d.value));
      any_id = true;
    } else {
      http::Inputs one;
      one.texts.push_back(d.value);
      prompts.push_back(std::move(Encode(ctx, one, doc_req)[0]));
    }
  }
  *tokens = CountTokens(prompts);
  if (any_id) ctx.front().PrefetchEmbedded(prompts);
  auto vecs =
      AwaitResult(ctx, ctx.scheduler->SubmitEmbed(std::move(prompts), r.options,
                                                  any_id ? EmbedStore::kReuse : EmbedStore::kNone,
                                                  {}, RequestDeadline(ctx)));
  std::vector<float> scores;
  for (size_t i = 1; i < vecs.size(); ++i) scores.push_back(Dot(vecs[0], vecs[i]));
  return scores;
}

std::vector<size_t> BestFirst(const std::vector<float>& scores) {
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  return order;
}

}  // namespace

std::vector<std::string> ParseCacheIds(const JsonFields& f, const ServerContext& ctx,
                                       size_t inputs) {
  std::vector<std::string> ids;
  if (auto list = f.StringList("ids", ctx.options.max_inputs)) {
    for (const auto& id : *list) http::RequireUtf8(id, "ids");
    ids = *list;
    if (ids.size() != inputs) {
      throw Unprocessable("'ids' has " + std::to_string(ids.size()) + " entries for " +
                          std::to_string(inputs) + " inputs");
    }
    for (const auto& id : ids) {
      if (id.empty() || id.size() > 256) throw Unprocessable("each id must be 1-256 bytes");
    }
  }
  return ids;
}

namespace {

void HandleEmbed(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  EmbedRequest r = ParseEmbedOptions(f, ctx);
  auto in = http::ParseInputs(f, "inputs", ctx.options.max_inputs, ctx.front().config().vocab_size);
  // "cache": true (or "ids") keeps each input's K/V from this same pass in the
  // document store.
  const std::vector<std::string> ids = ParseCacheIds(f, ctx, in.size());
  const bool cache = f.Bool("cache").value_or(!ids.empty());
  if (!cache && !ids.empty()) throw Unprocessable("'ids' needs \"cache\": true (the default)");
  if (cache && r.options.layer > 0) {
    throw Unprocessable("'layer' cannot be combined with 'cache': the store keeps every layer");
  }
  std::vector<EncodedPrompt> prompts = Encode(ctx, in, r);
  // Inputs another server embedded: their pooled vectors come with the entry.
  if (cache) ctx.front().PrefetchEmbedded(prompts);
  http::SendJson(res, AwaitResult(ctx, ctx.scheduler->SubmitEmbed(
                                           std::move(prompts), r.options,
                                           cache ? EmbedStore::kKeep : EmbedStore::kNone, ids,
                                           RequestDeadline(ctx))));
}

void HandleEmbeddings(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  f.String("model");  // any model name is accepted; type-checked only
  const std::string format = f.String("encoding_format").value_or("float");
  if (format != "float" && format != "base64") {
    throw Unprocessable("'encoding_format' must be \"float\" or \"base64\"");
  }
  EmbedRequest r = ParseEmbedOptions(f, ctx);
  auto in = http::ParseInputs(f, "input", ctx.options.max_inputs, ctx.front().config().vocab_size);
  auto prompts = Encode(ctx, in, r);
  const int64_t tokens = CountTokens(prompts);
  auto vecs = RunEmbed(ctx, std::move(prompts), r.options);
  json data = json::array();
  for (size_t i = 0; i < vecs.size(); ++i) {
    json e = {{"object", "embedding"}, {"index", i}};
    if (format == "base64") {
      e["embedding"] = http::Base64(vecs[i].data(), vecs[i].size() * sizeof(float));
    } else {
      e["embedding"] = vecs[i];
    }
    data.push_back(std::move(e));
  }
  http::SendJson(res, {{"object", "list"},
                       {"data", data},
                       {"model", ctx.model_id},
                       {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}});
}

void HandleRerank(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  const std::string query = f.RequireString("query");
  const std::vector<Doc> docs = ParseDocs(f, "texts", ctx.options.max_inputs);
  const bool raw = f.Bool("raw_scores").value_or(false);
  const bool return_text = f.Bool("return_text").value_or(false);
  int64_t tokens = 0;
  std::vector<float> scores = Rerank(ctx, f, query, docs, &tokens);
  json out = json::array();
  for (size_t i : BestFirst(scores)) {
    // Cosine in [-1, 1]; without raw_scores mapped to [0, 1] like TEI's scores.
    json e = {{"index", i}, {"score", raw ? scores[i] : (scores[i] + 1.0f) / 2.0f}};
    if (return_text) e["text"] = DocText(ctx, docs[i]);
    out.push_back(std::move(e));
  }
  http::SendJson(res, out);
}

void HandleCohereRerank(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  f.String("model");  // any model name is accepted; type-checked only
  const std::string query = f.RequireString("query");
  const std::vector<Doc> docs = ParseDocs(f, "documents", ctx.options.max_inputs);
  const int64_t top_n = f.Int("top_n", 1, static_cast<int64_t>(docs.size()) + 1000000)
                            .value_or(static_cast<int64_t>(docs.size()));
  const bool return_docs = f.Bool("return_documents").value_or(false);
  int64_t tokens = 0;
  std::vector<float> scores = Rerank(ctx, f, query, docs, &tokens);
  json results = json::array();
  for (size_t i : BestFirst(scores)) {
    if (static_cast<int64_t>(results.size()) >= top_n) break;
    json e = {{"index", i}, {"relevance_score", scores[i]}};
    if (return_docs) e["document"] = {{"text", DocText(ctx, docs[i])}};
    results.push_back(std::move(e));
  }
  http::SendJson(res, {{"id", http::RandomId("rerank-")},
                       {"model", ctx.model_id},
                       {"results", results},
                       {"usage", {{"total_tokens", tokens}}}});
}

// The BOS that add_special puts first has no text of its own: it is listed
// with the empty span at 0, so every id the model sees is in the list.
json TokenList(const Tokenizer& tok, const std::string& text, const std::vector<TokenSpan>& spans,
               bool with_bos) {
  json tokens = json::array();
  if (with_bos) {
    tokens.push_back({{"id", *tok.bos_id()},
                      {"text", tok.Decode({*tok.bos_id()})},
                      {"special", true},
                      {"start", 0},
                      {"stop", 0}});
  }
  for (const TokenSpan& s : spans) {
    tokens.push_back({{"id", s.id},
                      {"text", text.substr(s.start, s.stop - s.start)},
                      {"special", tok.IsSpecial(s.id)},
                      {"start", s.start},
                      {"stop", s.stop}});
  }
  return tokens;
}

}  // namespace

// Each input may have as many tokens as an /embed input (--max-input-tokens),
// so the answer stays within what the limits allow, whatever the body holds.
json TokenizeResponse(const ServerContext& ctx, const JsonFields& f) {
  auto texts = f.StringList("inputs", ctx.options.max_inputs);
  if (!texts) throw f.Missing("inputs");
  for (const auto& text : *texts) http::RequireUtf8(text, "inputs");
  const bool add_special = f.Bool("add_special_tokens").value_or(true);
  const Tokenizer& tok = ctx.front().tokenizer();
  const bool with_bos = add_special && tok.add_bos() && tok.bos_id();
  const int64_t limit = ctx.max_input_tokens();
  std::vector<std::vector<TokenSpan>> spans;
  for (size_t i = 0; i < texts->size(); ++i) {
    // Special tokens spelled in the text are recognised either way, as in
    // Hugging Face and TEI: add_special_tokens only says whether BOS is added.
    spans.push_back(tok.EncodeWithOffsets((*texts)[i], /*parse_special=*/true));
    const int64_t n = static_cast<int64_t>(spans.back().size()) + (with_bos ? 1 : 0);
    if (n > limit) {
      throw Unprocessable("input " + std::to_string(i) + " has " + std::to_string(n) +
                          " tokens, more than the limit of " + std::to_string(limit));
    }
  }
  json out = json::array();
  for (size_t i = 0; i < texts->size(); ++i) {
    out.push_back(TokenList(tok, (*texts)[i], spans[i], with_bos));
  }
  return out;
}

namespace {

void HandleTokenize(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  http::SendJson(res, TokenizeResponse(ctx, JsonFields::Request(body)));
}

void HandleDetokenize(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  const bool skip = f.Bool("skip_special_tokens").value_or(false);
  auto in =
      http::ParseInputs(f, "ids", ctx.options.max_inputs, ctx.front().tokenizer().VocabSize());
  if (in.ids.empty()) throw InvalidRequest("'ids' must be a list of token ids");
  // One id list answers with one string, a list of lists with a list.
  const bool nested = (*f.Find("ids"))[0].is_array();
  json out = json::array();
  for (const auto& ids : in.ids) out.push_back(ctx.front().tokenizer().Decode(ids, skip));
  http::SendJson(res, nested ? out : out[0]);
}

}  // namespace

void AddEmbedRoutes(Routes& routes, ServerContext& ctx) {
  const std::pair<const char*, void (*)(ServerContext&, const http::Request&, http::Response&)>
      posts[] = {{"/embed", HandleEmbed},       {"/v1/embeddings", HandleEmbeddings},
                 {"/rerank", HandleRerank},     {"/v1/rerank", HandleCohereRerank},
                 {"/tokenize", HandleTokenize}, {"/detokenize", HandleDetokenize}};
  for (const auto& [path, fn] : posts) {
    routes.Add(
        {"POST", path, path, false, true, true,
         [&ctx, fn = fn](const http::Request& req, http::Response& res) { fn(ctx, req, res); }});
  }
}

}  // namespace gritserve
