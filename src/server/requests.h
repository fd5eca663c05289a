// Request bodies to request structs: the parsing half of the routes, apart from
// the handlers so that tests and fuzz targets (tests/fuzz/request_fuzz.cc) can
// drive it without a server. Each throws a typed Error for bad input. They use
// only the context's options and thread-safe front end, never the scheduler.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gritserve/common/json_fields.h"
#include "gritserve/engine/engine.h"
#include "http_util.h"

namespace gritserve {

struct ServerContext;

// ---- routes_embed.cc ----

struct EmbedRequest {
  EmbedOptions options;
  bool truncate = false;
  bool truncate_left = false;
};

// Fields shared by /embed, /v1/embeddings and the rerank routes.
EmbedRequest ParseEmbedOptions(const JsonFields& f, const ServerContext& ctx);
// Inputs to prompts, each cut to (or refused past) the context's token limit.
std::vector<EncodedPrompt> Encode(const ServerContext& ctx, const http::Inputs& in,
                                  const EmbedRequest& r);

// A rerank document: a text, or the id of an entry cached by /embed.
struct Doc {
  std::string value;
  bool is_id = false;
};
std::vector<Doc> ParseDocs(const JsonFields& f, const char* field, int64_t max_items);
// "ids" name the cached entries for later /generate documents, one per input.
std::vector<std::string> ParseCacheIds(const JsonFields& f, const ServerContext& ctx,
                                       size_t inputs);
// /tokenize's answer: the tokens of each input with their spans.
http::json TokenizeResponse(const ServerContext& ctx, const JsonFields& f);

// ---- routes_generate.cc ----

struct GenRequest {
  std::vector<int32_t> prompt;
  std::vector<ResolvedDocument> documents;
  DocPositions positions = DocPositions::kSequential;
  SamplingParams params;
  bool stream = false;
  bool return_tokens = false;
  bool include_usage = false;
};

void ParseSampling(const JsonFields& f, const ServerContext& ctx, int64_t default_max_tokens,
                   GenRequest& r);
// "documents", "kv_source" and "positions"; unknown ids are a 404 naming them.
void ParseDocuments(const JsonFields& f, const ServerContext& ctx, GenRequest& r);
void CheckPrompt(const ServerContext& ctx, const std::vector<int32_t>& prompt);
std::vector<int32_t> PromptFrom(const JsonFields& f, const ServerContext& ctx, const char* key,
                                bool raw);
std::vector<ChatMessage> ParseMessages(const JsonFields& f);

}  // namespace gritserve
