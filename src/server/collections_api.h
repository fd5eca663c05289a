// What the other routes use of the collections: "retrieve" in the generation
// routes, and the collections' part of /metrics and /info.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "gritserve/collection/collection.h"
#include "gritserve/common/json_fields.h"
#include "gritserve/engine/engine.h"
#include "http_util.h"

namespace gritserve {

struct ServerContext;

// The documents a question retrieved, resolved for the generation (their K/V
// found in the store by their text, or computed there when evicted).
struct Retrieval {
  std::vector<SearchHit> hits;
  // The hits' documents, then (with "cache_query") the question's own.
  std::vector<ResolvedDocument> documents;
  double ms = 0;  // embedding the question, searching, resolving
};

// The embedding prompt of a collection document (its document instruction):
// the prompt whose pass keeps the document's K/V in the store.
EncodedPrompt CollectionDocumentPrompt(const FrontEnd& front, const CollectionSettings& s,
                                       const std::string& text);
// A collection document as a generation places it: with embedding-pass K/V
// the store entry its add kept (the record its "<collection>/<id>" alias
// holds), with causal K/V its text's tokens. Found again from the text, so an
// evicted entry (and its alias) is simply computed again.
ResolvedDocument ResolveCollectionDocument(const FrontEnd& front, const CollectionSettings& s,
                                           const std::string& text, KvSource source);

// The question as a document placed after the retrieved ones (GritLM's
// Doc-Query caching): its embedding prompt with the query instruction, whose
// K/V the search's own embedding pass kept (or, evicted, computed again by
// the same bidirectional pass).
ResolvedDocument QueryDocument(const FrontEnd& front, const CollectionSettings& s,
                               const std::string& question);

// "retrieve": {"collection", "top_k", "min_score", "filter", "rerank",
// "query", "cache_query"} of a generation request, or nothing when absent.
// Validates it all first, then embeds the question ("query", or else the
// prompt / last user message) with the collection's query instruction and
// searches. With "cache_query" the question's K/V from that pass follows the
// documents.
std::optional<Retrieval> Retrieve(ServerContext& ctx, const JsonFields& f);
// The question a generation request asks: its prompt, or its last user message.
std::string QuestionOf(const ServerContext& ctx, const JsonFields& f);
// "retrieved": [{"id", "score"}], as the response names them.
http::json RetrievedJson(const Retrieval& r);

// Prometheus lines: collection sizes, search latency histogram, counters.
std::string CollectionMetrics(const ServerContext& ctx);
// The collections' settings and limits, for /info.
http::json CollectionInfo(const ServerContext& ctx);

}  // namespace gritserve
