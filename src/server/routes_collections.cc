// /v1/collections: create, list, show and drop collections; add and delete
// their documents; search them. Documents are embedded through the scheduler
// like /embed with "ids" (the same pass keeps their K/V in the document
// store); everything a request says is checked before anything is embedded or
// stored, so a refused request changes nothing.
#include <algorithm>
#include <chrono>
#include <numeric>
#include <set>

#include "collections_api.h"
#include "requests.h"
#include "server_context.h"

namespace gritserve {
namespace {

using http::json;
constexpr char kPrefix[] = "/v1/collections/";
constexpr int64_t kMaxTopK = 1000;
constexpr int64_t kMaxIdBytes = 256;
constexpr size_t kEmbedGroup = 64;          // prompts per embedding job
constexpr int64_t kChunksPerDocument = 64;  // chunks a request may make per document allowed

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

CollectionStore& Store(const ServerContext& ctx) { return *ctx.collections; }

json Describe(const Collection& c) {
  const CollectionSettings& s = c.settings();
  return {{"name", s.name},
          {"document_instruction", s.document_instruction},
          {"query_instruction", s.query_instruction},
          {"kv_source", KvSourceName(s.kv_source)},
          {"documents", c.size()},
          {"index", c.uses_graph() ? "hnsw" : "exact"}};
}

// The store alias of a collection document: "<collection>/<id>".
std::string Alias(const CollectionSettings& s, const std::string& id) { return s.name + "/" + id; }

// Frees what the store holds for a document: its embedding-pass entry, a
// causal entry built for a generation, and (unless a new document took it
// over) its alias.
void FreeKv(ServerContext& ctx, const CollectionSettings& s, const CollectionDocument& d,
            bool alias = true) {
  if (alias) ctx.front().RemoveDocument(Alias(s, d.id));
  for (KvSource source : {KvSource::kEmbed, KvSource::kCausal}) {
    ctx.front().RemoveDocument(ResolveCollectionDocument(ctx.front(), s, d.text, source).key.Hex());
  }
}

// "filter": an object of top-level metadata keys and the scalar values they must equal.
json ParseFilter(const JsonFields& f) {
  const json* filter = f.Find("filter");
  if (filter == nullptr) return nullptr;
  if (!filter->is_object()) throw InvalidRequest("'filter' must be an object of metadata values");
  for (auto it = filter->begin(); it != filter->end(); ++it) {
    if (it.value().is_object() || it.value().is_array()) {
      throw Unprocessable("'filter' values must be strings, numbers, booleans or null ('" +
                          it.key() + "' is not)");
    }
  }
  return *filter;
}

struct SearchRequest {
  std::string collection;
  SearchParams params;
  bool rerank = false;
};

SearchRequest ParseSearch(const JsonFields& f, int64_t max_top_k, int64_t default_top_k) {
  SearchRequest r;
  r.params.top_k = f.Int("top_k", 1, max_top_k).value_or(std::min(default_top_k, max_top_k));
  if (auto m = f.Number("min_score", -1.0, 1.0)) r.params.min_score = *m;
  r.params.filter = ParseFilter(f);
  r.rerank = f.Bool("rerank").value_or(false);
  return r;
}

// The query's embedding; with `keep`, the same pass keeps its K/V in the
// document store (GritLM's query caching), under the key QueryDocument names.
std::vector<float> EmbedQuery(ServerContext& ctx, const CollectionSettings& s,
                              const std::string& query, bool keep = false) {
  http::RequireUtf8(query, "query");
  if (query.empty()) throw Unprocessable("the query is empty");
  EmbedRequest r;
  r.options.instruction = s.query_instruction;
  http::Inputs in;
  in.texts.push_back(query);
  std::vector<EncodedPrompt> prompts = Encode(ctx, in, r);
  const EmbedStore store = keep ? EmbedStore::kKeep : EmbedStore::kNone;
  return AwaitResult(ctx, ctx.scheduler->SubmitEmbed(std::move(prompts), r.options, store)).at(0);
}

// Re-scores the candidates as /rerank does (the question with the query
// instruction, the texts embedded again without an instruction).
void Rerank(ServerContext& ctx, const CollectionSettings& s, const std::string& query,
            std::vector<SearchHit>& hits) {
  if (hits.empty()) return;
  EmbedRequest q, d;
  q.options.instruction = s.query_instruction;
  http::Inputs qin, din;
  qin.texts.push_back(query);
  for (const auto& h : hits) din.texts.push_back(h.text);
  std::vector<EncodedPrompt> prompts = Encode(ctx, qin, q);
  for (auto& p : Encode(ctx, din, d)) prompts.push_back(std::move(p));
  auto vecs = AwaitResult(ctx, ctx.scheduler->SubmitEmbed(std::move(prompts), q.options));
  for (size_t i = 0; i < hits.size(); ++i) {
    hits[i].score = std::inner_product(vecs[0].begin(), vecs[0].end(), vecs[i + 1].begin(), 0.0f);
  }
  std::stable_sort(hits.begin(), hits.end(),
                   [](const SearchHit& a, const SearchHit& b) { return a.score > b.score; });
}

std::vector<SearchHit> RunSearch(ServerContext& ctx, const Collection& c, const std::string& query,
                                 const SearchRequest& r, bool keep_query_kv = false) {
  const std::vector<float> q = EmbedQuery(ctx, c.settings(), query, keep_query_kv);
  if (!r.rerank) return Store(ctx).Search(c, q, r.params);
  // More candidates than asked for, ordered again by the rerank score.
  SearchParams wide = r.params;
  wide.top_k = std::min<int64_t>(std::max<int64_t>(r.params.top_k * 4, 20), 100);
  wide.min_score.reset();
  std::vector<SearchHit> hits = Store(ctx).Search(c, q, wide);
  Rerank(ctx, c.settings(), query, hits);
  std::vector<SearchHit> out;
  for (auto& h : hits) {
    if (static_cast<int64_t>(out.size()) >= r.params.top_k) break;
    if (r.params.min_score && h.score < *r.params.min_score) break;
    out.push_back(std::move(h));
  }
  return out;
}

// ---- collections ----

void HandleCreate(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  CollectionSettings s;
  s.name = f.RequireString("name");
  s.document_instruction = f.String("document_instruction").value_or("");
  s.query_instruction = f.String("query_instruction").value_or("");
  http::RequireUtf8(s.name, "name");
  http::RequireUtf8(s.document_instruction, "document_instruction");
  http::RequireUtf8(s.query_instruction, "query_instruction");
  const std::string source = f.String("kv_source").value_or(KvSourceName(ctx.default_kv_source()));
  if (source != "embed" && source != "causal") {
    throw Unprocessable("'kv_source' must be \"embed\" or \"causal\"");
  }
  s.kv_source = source == "embed" ? KvSource::kEmbed : KvSource::kCausal;
  http::SendJson(res, Describe(*Store(ctx).Create(std::move(s))), 201);
}

void HandleList(ServerContext& ctx, http::Response& res) {
  json list = json::array();
  for (const auto& c : Store(ctx).List()) list.push_back(Describe(*c));
  http::SendJson(res, {{"collections", list}});
}

// The name and the rest of a path under /v1/collections/ ("" when none).
std::pair<std::string, std::string> SplitPath(const std::string& path) {
  const std::string rest = path.substr(std::string(kPrefix).size());
  const size_t slash = rest.find('/');
  if (slash == std::string::npos) return {rest, ""};
  return {rest.substr(0, slash), rest.substr(slash + 1)};
}

void HandleShow(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const auto [name, rest] = SplitPath(req.path);
  if (!rest.empty()) {
    if (rest == "documents" || rest == "search") {
      throw Error(ErrorKind::kMethodNotAllowed, "method GET is not allowed on " + req.path);
    }
    throw NotFound("no route GET " + req.path);
  }
  http::SendJson(res, Describe(*Store(ctx).Get(name)));
}

void HandleDrop(ServerContext& ctx, const std::string& name, http::Response& res) {
  std::shared_ptr<Collection> c = Store(ctx).Drop(name);
  const auto docs = c->Documents();
  for (const auto& d : docs) FreeKv(ctx, c->settings(), d);
  http::SendJson(res, {{"name", name}, {"deleted", true}, {"documents", docs.size()}});
}

// ---- documents ----

struct Chunking {
  int64_t tokens = 0;  // 0: none
  int64_t overlap = 0;
};

Chunking ParseChunking(const ServerContext& ctx, const JsonFields& f) {
  Chunking c;
  const json* j = f.Find("chunking");
  if (j == nullptr) return c;
  if (!j->is_object()) throw InvalidRequest("'chunking' must be {\"tokens\": N, \"overlap\": M}");
  const JsonFields cf = f.Nested(*j);
  c.tokens = cf.RequireInt("tokens", 1, ctx.max_input_tokens());
  c.overlap = cf.Int("overlap", 0, c.tokens - 1).value_or(0);
  return c;
}

// A document's text as stored: whole, or in chunks "id#k" of `tokens` tokens
// overlapping by `overlap` (only when it has more).
void AddChunks(const ServerContext& ctx, const Chunking& ch, CollectionDocument d,
               std::vector<CollectionDocument>* out) {
  if (ch.tokens == 0) return out->push_back(std::move(d));
  const Tokenizer& tok = ctx.front().tokenizer();
  const std::vector<int32_t> ids = tok.Encode(d.text, /*parse_special=*/false);
  if (static_cast<int64_t>(ids.size()) <= ch.tokens) return out->push_back(std::move(d));
  const size_t step = static_cast<size_t>(ch.tokens - ch.overlap);
  for (size_t start = 0, k = 0;; start += step, ++k) {
    const size_t end = std::min(ids.size(), start + static_cast<size_t>(ch.tokens));
    CollectionDocument c = d;
    c.id = d.id + "#" + std::to_string(k);
    c.text = tok.Decode(std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(start),
                                             ids.begin() + static_cast<std::ptrdiff_t>(end)));
    out->push_back(std::move(c));
    if (end == ids.size()) break;
  }
}

std::vector<CollectionDocument> ParseDocuments(const ServerContext& ctx, const JsonFields& f) {
  const json* docs = f.Find("documents");
  if (docs == nullptr) throw f.Missing("documents");
  if (!docs->is_array() || docs->empty()) {
    throw InvalidRequest(
        "'documents' must be a non-empty list of {\"id\", \"text\", \"metadata\"}");
  }
  const int64_t max = ctx.options.max_collection_batch;
  if (static_cast<int64_t>(docs->size()) > max) {
    throw Error(ErrorKind::kTooLarge, "'documents' has " + std::to_string(docs->size()) +
                                          " items, more than the limit of " + std::to_string(max) +
                                          " (--max-collection-batch)");
  }
  const Chunking ch = ParseChunking(ctx, f);
  std::vector<CollectionDocument> out;
  std::set<std::string> seen;
  for (const json& d : *docs) {
    if (!d.is_object())
      throw InvalidRequest("each document must be {\"id\", \"text\", \"metadata\"}");
    const JsonFields df = f.Nested(d);
    CollectionDocument doc;
    doc.id = df.RequireString("id");
    doc.text = df.RequireString("text");
    http::RequireUtf8(doc.id, "id");
    http::RequireUtf8(doc.text, "text");
    if (doc.id.empty() || static_cast<int64_t>(doc.id.size()) > kMaxIdBytes) {
      throw Unprocessable("each document id must be 1-256 bytes");
    }
    if (doc.id.find('#') != std::string::npos) {
      throw Unprocessable("document id '" + doc.id + "' has '#', which names chunks (id#k)");
    }
    if (!seen.insert(doc.id).second) throw Unprocessable("document id '" + doc.id + "' repeats");
    if (doc.text.empty()) throw Unprocessable("document '" + doc.id + "' has an empty text");
    if (const json* m = df.Find("metadata")) {
      if (!m->is_object()) throw InvalidRequest("'metadata' must be an object");
      doc.metadata = *m;
    }
    doc.parent = doc.id;
    AddChunks(ctx, ch, std::move(doc), &out);
  }
  if (static_cast<int64_t>(out.size()) > max * kChunksPerDocument) {
    throw Error(ErrorKind::kTooLarge, "the documents make " + std::to_string(out.size()) +
                                          " chunks, more than the limit of " +
                                          std::to_string(max * kChunksPerDocument));
  }
  return out;
}

// Prompts for the documents, each within the token limit (422 naming the
// document otherwise: chunking splits long texts).
std::vector<EncodedPrompt> DocumentPrompts(const ServerContext& ctx, const CollectionSettings& s,
                                           const std::vector<CollectionDocument>& docs) {
  std::vector<EncodedPrompt> prompts;
  const int64_t limit = ctx.max_input_tokens();
  for (const auto& d : docs) {
    prompts.push_back(CollectionDocumentPrompt(ctx.front(), s, d.text));
    const int64_t n = static_cast<int64_t>(prompts.back().ids.size());
    if (n > limit) {
      throw Unprocessable("document '" + d.id + "' has " + std::to_string(n) +
                          " tokens with its instruction, more than the limit of " +
                          std::to_string(limit) + " (\"chunking\": {\"tokens\": N} splits it)");
    }
  }
  return prompts;
}

void HandleAddDocuments(ServerContext& ctx, Collection& c, const http::Request& req,
                        http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  std::vector<CollectionDocument> docs = ParseDocuments(ctx, f);
  const CollectionSettings& s = c.settings();
  std::vector<EncodedPrompt> prompts = DocumentPrompts(ctx, s, docs);
  const int64_t after = c.SizeAfter(docs);
  if (after > ctx.collections->options().max_documents) {
    throw Error(ErrorKind::kTooLarge, "collection '" + s.name + "' would hold " +
                                          std::to_string(after) +
                                          " documents, more than the limit of " +
                                          std::to_string(ctx.collections->options().max_documents) +
                                          " (--max-collection-documents)");
  }
  // With embedding-pass K/V, the same pass keeps each document's K/V in the
  // store (under "<collection>/<id>"); causal K/V is built on first use.
  const bool keep = s.kv_source == KvSource::kEmbed;
  EmbedOptions o;
  o.instruction = s.document_instruction;
  size_t start = 0;
  try {
    for (; start < docs.size(); start += kEmbedGroup) {
      const size_t end = std::min(docs.size(), start + kEmbedGroup);
      std::vector<EncodedPrompt> group(prompts.begin() + static_cast<std::ptrdiff_t>(start),
                                       prompts.begin() + static_cast<std::ptrdiff_t>(end));
      std::vector<std::string> aliases;
      for (size_t i = start; i < end && keep; ++i) aliases.push_back(Alias(s, docs[i].id));
      auto vecs = AwaitResult(
          ctx, ctx.scheduler->SubmitEmbed(std::move(group), o,
                                          keep ? EmbedStore::kKeep : EmbedStore::kNone, aliases));
      for (size_t i = start; i < end; ++i) docs[i].vector = std::move(vecs.at(i - start));
    }
  } catch (const Error&) {
    // Refused part way (queue full, timeout): the collection is unchanged, and
    // the ids the finished groups named in the store go again.
    for (size_t i = 0; i < std::min(start + kEmbedGroup, docs.size()) && keep; ++i) {
      ctx.front().RemoveDocument(Alias(s, docs[i].id));
    }
    throw;
  }
  std::set<std::string> texts, ids;
  json stored = json::array();
  for (const auto& d : docs) {
    texts.insert(d.text);
    ids.insert(d.id);
    stored.push_back(d.id);
  }
  const size_t added = docs.size();
  for (const auto& old : c.Upsert(std::move(docs), ctx.collections->options().max_documents)) {
    // A replaced document's K/V goes unless a new document has the same text;
    // its alias goes unless a new document has the same id (and points it at
    // its own entry by now).
    if (texts.count(old.text) == 0) {
      FreeKv(ctx, s, old, /*alias=*/ids.count(old.id) == 0);
    } else if (ids.count(old.id) == 0) {
      ctx.front().RemoveDocument(Alias(s, old.id));
    }
  }
  Store(ctx).Persist(c);
  http::SendJson(
      res, {{"collection", s.name}, {"stored", added}, {"ids", stored}, {"documents", c.size()}});
}

void HandleDeleteDocument(ServerContext& ctx, const std::string& name, const std::string& id,
                          http::Response& res) {
  std::shared_ptr<Collection> c = Store(ctx).Get(name);
  const auto removed = c->Remove(id);
  if (removed.empty()) {
    throw NotFound("collection '" + name + "' has no document '" + id + "'");
  }
  for (const auto& d : removed) FreeKv(ctx, c->settings(), d);
  Store(ctx).Persist(*c);
  json ids = json::array();
  for (const auto& d : removed) ids.push_back(d.id);
  http::SendJson(res, {{"id", id}, {"deleted", ids}, {"documents", c->size()}});
}

json HitJson(const SearchHit& h, bool text, bool metadata) {
  json e = {{"id", h.id}, {"score", h.score}};
  if (text) e["text"] = h.text;
  if (metadata && !h.metadata.is_null()) e["metadata"] = h.metadata;
  return e;
}

void HandleSearch(ServerContext& ctx, Collection& c, const http::Request& req,
                  http::Response& res) {
  const json body = http::ParseBody(req.body);
  const JsonFields f = JsonFields::Request(body);
  const std::string query = f.RequireString("query");
  const SearchRequest r = ParseSearch(f, kMaxTopK, 10);
  const bool text = f.Bool("return_text").value_or(true);
  const bool metadata = f.Bool("return_metadata").value_or(true);
  const auto t0 = std::chrono::steady_clock::now();
  json results = json::array();
  for (const auto& h : RunSearch(ctx, c, query, r)) results.push_back(HitJson(h, text, metadata));
  http::SendJson(res, {{"results", results}, {"timings", {{"search_ms", MsSince(t0)}}}});
}

void HandlePost(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const auto [name, rest] = SplitPath(req.path);
  if (rest != "documents" && rest != "search") throw NotFound("no route POST " + req.path);
  std::shared_ptr<Collection> c = Store(ctx).Get(name);
  if (rest == "documents") return HandleAddDocuments(ctx, *c, req, res);
  HandleSearch(ctx, *c, req, res);
}

void HandleDelete(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const auto [name, rest] = SplitPath(req.path);
  if (rest.empty()) return HandleDrop(ctx, name, res);
  const std::string docs = "documents/";
  if (rest.rfind(docs, 0) != 0 || rest.size() == docs.size()) {
    throw NotFound("no route DELETE " + req.path);
  }
  HandleDeleteDocument(ctx, name, rest.substr(docs.size()), res);
}

}  // namespace

EncodedPrompt CollectionDocumentPrompt(const FrontEnd& front, const CollectionSettings& s,
                                       const std::string& text) {
  EmbedOptions o;
  o.instruction = s.document_instruction;
  return front.EncodeEmbed(text, o);
}

ResolvedDocument ResolveCollectionDocument(const FrontEnd& front, const CollectionSettings& s,
                                           const std::string& text, KvSource source) {
  const EncodedPrompt p = CollectionDocumentPrompt(front, s, text);
  DocumentRef ref;
  if (source == KvSource::kEmbed) {
    ref.ids = p.ids;
  } else {
    ref.ids.assign(p.ids.begin() + static_cast<std::ptrdiff_t>(p.text_begin),
                   p.ids.begin() + static_cast<std::ptrdiff_t>(p.text_end));
  }
  ResolvedDocument r = front.ResolveDocuments({ref}, source).at(0);
  if (source == KvSource::kEmbed) {
    // The same record /embed's alias holds: the text's span within the prompt.
    r.text_begin = p.text_begin;
    r.text_end = p.text_end;
  }
  return r;
}

ResolvedDocument QueryDocument(const FrontEnd& front, const CollectionSettings& s,
                               const std::string& question) {
  EmbedOptions o;
  o.instruction = s.query_instruction;
  const EncodedPrompt p = front.EncodeEmbed(question, o);
  DocumentRef ref;
  ref.ids = p.ids;
  ResolvedDocument r = front.ResolveDocuments({ref}, KvSource::kEmbed).at(0);
  r.text_begin = p.text_begin;
  r.text_end = p.text_end;
  return r;
}

// ---- retrieval inside generation ----

std::string QuestionOf(const ServerContext& ctx, const JsonFields& f) {
  if (f.Has("messages")) {
    const auto messages = ParseMessages(f);
    for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
      if (it->role == "user") return it->content;
    }
    throw Unprocessable("'retrieve' needs a user message to search with");
  }
  const json* p = f.Find("prompt");
  if (p == nullptr) throw f.Missing("prompt");
  if (p->is_string()) return p->get<std::string>();
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) return (*p)[0].get<std::string>();
  http::Inputs in = http::ParseInputs(f, "prompt", 1, ctx.front().config().vocab_size);
  if (in.ids.size() != 1) throw Unprocessable("'prompt' must be one prompt");
  return ctx.front().tokenizer().Decode(in.ids[0], /*skip_special=*/true);
}

std::optional<Retrieval> Retrieve(ServerContext& ctx, const JsonFields& f) {
  const json* j = f.Find("retrieve");
  if (j == nullptr) return std::nullopt;
  if (!j->is_object()) {
    throw InvalidRequest("'retrieve' must be {\"collection\", \"top_k\", \"min_score\", ...}");
  }
  const auto t0 = std::chrono::steady_clock::now();
  const JsonFields rf = f.Nested(*j);
  SearchRequest r = ParseSearch(rf, ctx.options.max_inputs, 4);
  r.collection = rf.RequireString("collection");
  const std::optional<std::string> query = rf.String("query");
  const bool cache_query = rf.Bool("cache_query").value_or(false);
  std::shared_ptr<Collection> c = Store(ctx).Get(r.collection);
  // The request's kv_source wins over the collection's.
  KvSource source = c->settings().kv_source;
  if (auto s = f.String("kv_source"))
    source = *s == "causal" ? KvSource::kCausal : KvSource::kEmbed;
  if (cache_query && source != KvSource::kEmbed) {
    // The query's K/V comes from its (bidirectional) embedding pass.
    throw Unprocessable("'cache_query' needs \"kv_source\": \"embed\"");
  }
  const std::string question = query ? *query : QuestionOf(ctx, f);
  Retrieval out;
  out.hits = RunSearch(ctx, *c, question, r, cache_query);
  for (const auto& h : out.hits) {
    out.documents.push_back(ResolveCollectionDocument(ctx.front(), c->settings(), h.text, source));
  }
  if (cache_query) {
    out.documents.push_back(QueryDocument(ctx.front(), c->settings(), question));
  }
  out.ms = MsSince(t0);
  return out;
}

json RetrievedJson(const Retrieval& r) {
  json out = json::array();
  for (const auto& h : r.hits) out.push_back({{"id", h.id}, {"score", h.score}});
  return out;
}

std::string CollectionMetrics(const ServerContext& ctx) {
  if (!ctx.collections) return "";
  std::string out =
      "# HELP gritserve_collection_documents Documents (chunks) per collection.\n"
      "# TYPE gritserve_collection_documents gauge\n";
  const auto list = Store(ctx).List();
  for (const auto& c : list) {
    out += "gritserve_collection_documents{collection=\"" + c->settings().name + "\"} " +
           std::to_string(c->size()) + "\n";
  }
  out += "# TYPE gritserve_collections gauge\ngritserve_collections " +
         std::to_string(list.size()) + "\n";
  const SearchLatency l = Store(ctx).latency();
  out +=
      "# HELP gritserve_collection_search_seconds Vector search time (query embedding "
      "excluded).\n# TYPE gritserve_collection_search_seconds histogram\n";
  for (size_t i = 0; i < l.buckets.size(); ++i) {
    std::ostringstream le;
    le << SearchLatency::kBounds[i];
    out += "gritserve_collection_search_seconds_bucket{le=\"" + le.str() + "\"} " +
           std::to_string(l.buckets[i]) + "\n";
  }
  out += "gritserve_collection_search_seconds_bucket{le=\"+Inf\"} " + std::to_string(l.count) +
         "\ngritserve_collection_search_seconds_sum " + std::to_string(l.sum) +
         "\ngritserve_collection_search_seconds_count " + std::to_string(l.count) + "\n";
  out +=
      "# TYPE gritserve_collection_index_rebuilds_total counter\n"
      "gritserve_collection_index_rebuilds_total " +
      std::to_string(Store(ctx).index_rebuilds()) +
      "\n# TYPE gritserve_collection_write_errors_total counter\n"
      "gritserve_collection_write_errors_total " +
      std::to_string(Store(ctx).persist_errors()) + "\n";
  return out;
}

json CollectionInfo(const ServerContext& ctx) {
  const CollectionOptions& o = ctx.options.collections;
  return {{"data_dir", o.data_dir},
          {"max_collection_batch", ctx.options.max_collection_batch},
          {"max_collection_documents", o.max_documents},
          {"max_collections", o.max_collections},
          {"max_top_k", kMaxTopK},
          {"exact_below", o.index.exact_below},
          {"hnsw",
           {{"m", o.index.m},
            {"ef_construction", o.index.ef_construction},
            {"ef_search", o.index.ef_search}}}};
}

void AddCollectionRoutes(Routes& routes, ServerContext& ctx) {
  using Fn = void (*)(ServerContext&, const http::Request&, http::Response&);
  auto add = [&](const char* method, const char* path, const char* metric, bool prefix, Fn fn) {
    routes.Add({method, path, metric, prefix, true, true,
                [&ctx, fn](const http::Request& req, http::Response& res) { fn(ctx, req, res); }});
  };
  add("POST", "/v1/collections", "/v1/collections", false, HandleCreate);
  add("GET", "/v1/collections", "/v1/collections", false,
      [](ServerContext& c, const http::Request&, http::Response& res) { HandleList(c, res); });
  add("GET", kPrefix, "/v1/collections/{name}", true, HandleShow);
  add("POST", kPrefix, "/v1/collections/{name}/*", true, HandlePost);
  add("DELETE", kPrefix, "/v1/collections/{name}/*", true, HandleDelete);
}

}  // namespace gritserve
