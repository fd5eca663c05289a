// The OpenAPI 3.1 document served at /openapi.json. It is written by hand next
// to the route files rather than generated, so every field here must be kept in
// step with routes_embed.cc, routes_generate.cc, routes_info.cc and the cache
// routes when they change (the collection routes: openapi_collections.cc).
#include "openapi.h"

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "http_util.h"

namespace gritserve {
namespace {

using nlohmann::json;

// ---- Schema helpers: keep the document readable as a table of fields. ----

// Most fields need no description: their names match the OpenAI/TEI APIs.
json T(const char* type) { return {{"type", type}}; }

// Properties that share one type and need no description.
json Typed(const char* type, std::initializer_list<const char*> names) {
  json p = json::object();
  for (const char* n : names) p[n] = T(type);
  return p;
}

json Ref(const std::string& name) { return {{"$ref", "#/components/schemas/" + name}}; }

// A scalar field; `def` stays out of the schema when null.
json Field(const char* type, const std::string& description, json def = nullptr) {
  json s = {{"type", type}, {"description", description}};
  if (!def.is_null()) s["default"] = std::move(def);
  return s;
}

json Enum(std::initializer_list<const char*> values, const std::string& description,
          json def = nullptr) {
  json s = Field("string", description, std::move(def));
  s["enum"] = json::array();
  for (const char* v : values) s["enum"].push_back(v);
  return s;
}

json ArrayOf(json items, const std::string& description = "") {
  json s = {{"type", "array"}, {"items", std::move(items)}};
  if (!description.empty()) s["description"] = description;
  return s;
}

json OneOf(std::vector<json> alternatives, const std::string& description = "") {
  json s = {{"oneOf", std::move(alternatives)}};
  if (!description.empty()) s["description"] = description;
  return s;
}

json Object(json properties, std::vector<std::string> required = {},
            const std::string& description = "") {
  json s = {{"type", "object"}, {"properties", std::move(properties)}};
  if (!required.empty()) s["required"] = std::move(required);
  if (!description.empty()) s["description"] = description;
  return s;
}

json Int(const std::string& description, json minimum = nullptr) {
  json s = Field("integer", description);
  if (!minimum.is_null()) s["minimum"] = std::move(minimum);
  return s;
}

// Merges several property tables, so shared option groups are written once.
json Props(std::initializer_list<json> parts) {
  json out = json::object();
  for (const json& p : parts) out.update(p);
  return out;
}

json StringOrList(const std::string& description) {
  return OneOf({T("string"), ArrayOf(T("string"))}, description);
}

// ---- Operation helpers. ----

struct ErrorStatus {
  ErrorKind kind;
  const char* name;
  const char* description;
};

// Every error the server sends has the shared Error body, those of the HTTP
// front (framing, deadlines, the connection cap) included.
constexpr ErrorStatus kErrors[] = {
    {ErrorKind::kInvalidRequest, "BadRequest",
     "Malformed JSON, a missing field, or a field of the wrong type."},
    {ErrorKind::kUnauthorized, "Unauthorized",
     "Missing or wrong API key (only when started with --api-key)."},
    {ErrorKind::kNotFound, "NotFound", "Unknown route or unknown cached document id."},
    {ErrorKind::kConflict, "Conflict", "A collection of that name exists."},
    {ErrorKind::kTimeout, "RequestTimeout",
     "The request's headers or body did not arrive within the server's deadline."},
    {ErrorKind::kLengthRequired, "LengthRequired",
     "A body sent with neither Content-Length nor chunked transfer encoding."},
    {ErrorKind::kTooLarge, "PayloadTooLarge",
     "Request body or number of inputs over the server's limits."},
    {ErrorKind::kUnprocessable, "Unprocessable",
     "Valid JSON but unusable values: too many tokens without truncation, a parameter out "
     "of range, invalid UTF-8, an empty input."},
    {ErrorKind::kQueueFull, "QueueFull", "Too many requests queued or running; retry later."},
    {ErrorKind::kUnavailable, "Unavailable",
     "The model is still loading, the server is shutting down, or it has too many open "
     "connections."},
    {ErrorKind::kHeaderTooLarge, "HeaderFieldsTooLarge", "Request header fields over 16 KiB."},
};

// A route's errors are kinds, so that their codes here are the ones the server
// sends (http::StatusFor).
using Errors = std::initializer_list<ErrorKind>;

json ErrorResponses(Errors kinds) {
  json out = json::object();
  for (ErrorKind kind : kinds) {
    for (const ErrorStatus& e : kErrors) {
      if (e.kind == kind) {
        out[std::to_string(http::StatusFor(kind))] = {
            {"$ref", std::string("#/components/responses/") + e.name}};
      }
    }
  }
  return out;
}

json JsonBody(json schema) { return {{"application/json", {{"schema", std::move(schema)}}}}; }

// Errors of a route that runs the model: the scheduler may refuse with kQueueFull.
const Errors kModelErrors = {ErrorKind::kInvalidRequest, ErrorKind::kUnauthorized,
                             ErrorKind::kTooLarge,       ErrorKind::kUnprocessable,
                             ErrorKind::kQueueFull,      ErrorKind::kUnavailable};
// /generate's documents may name an id that is not in the store.
const Errors kGenerateErrors = {ErrorKind::kInvalidRequest, ErrorKind::kUnauthorized,
                                ErrorKind::kNotFound,       ErrorKind::kTooLarge,
                                ErrorKind::kUnprocessable,  ErrorKind::kQueueFull,
                                ErrorKind::kUnavailable};
// Errors of a route that validates a body but never queues (tokeniser only).
const Errors kBodyErrors = {ErrorKind::kInvalidRequest, ErrorKind::kUnauthorized,
                            ErrorKind::kTooLarge, ErrorKind::kUnprocessable,
                            ErrorKind::kUnavailable};
// Errors of a GET that needs the model.
const Errors kGetErrors = {ErrorKind::kUnauthorized, ErrorKind::kUnavailable};

json Operation(const char* id, const char* tag, const std::string& summary, json ok,
               Errors errors) {
  json responses = ErrorResponses(errors);
  responses["200"] = std::move(ok);
  return {{"operationId", id},
          {"tags", json::array({tag})},
          {"summary", summary},
          {"responses", std::move(responses)}};
}

// A POST taking a JSON body. With `stream_event` set, `"stream": true` switches
// the 200 response to server-sent events whose data lines have that schema.
json PostJson(const char* id, const char* tag, const std::string& summary, json request,
              json response, Errors errors, json stream_event = nullptr) {
  json ok = {{"description", "Success."}, {"content", JsonBody(std::move(response))}};
  if (!stream_event.is_null()) {
    ok["description"] =
        "Success. With \"stream\": true, server-sent events: each event is "
        "`data: <JSON>` followed by a blank line, the stream ends with `data: [DONE]`; an "
        "error after the stream started arrives as `data: {\"error\": {...}}` before "
        "[DONE].";
    ok["content"]["text/event-stream"] = {
        {"schema", {{"type", "string"}, {"description", "SSE stream (see x-event-data)."}}},
        {"x-event-data", std::move(stream_event)}};
  }
  json op = Operation(id, tag, summary, std::move(ok), errors);
  op["requestBody"] = {{"required", true}, {"content", JsonBody(std::move(request))}};
  return op;
}

json JsonOp(const char* id, const char* tag, const std::string& summary, json response,
            Errors errors) {
  return Operation(id, tag, summary,
                   {{"description", "Success."}, {"content", JsonBody(std::move(response))}},
                   errors);
}

// ---- Shared field groups. ----

json Inputs(const std::string& what) {
  json ids = ArrayOf({{"type", "integer"}, {"minimum", 0}});
  return OneOf({T("string"), ArrayOf(T("string")), ids, ArrayOf(ids)},
               what +
                   ": a string, a list of strings, a list of token ids, or a list of "
                   "lists of token ids. Token ids are used as given (no template).");
}

// Whether special tokens spelled in request text are parsed (routes_embed.cc,
// routes_generate.cc, template.h).
json ParseSpecialProp(const std::string& what) {
  return {{"parse_special_tokens",
           Field("boolean",
                 "Let special tokens spelled in " + what +
                     " (e.g. \"<|im_start|>\") become control tokens. By default text placed "
                     "inside the prompt template is literal, so a client cannot forge the "
                     "template's markup; raw text is always used as given.",
                 false)}};
}

// Options every embedding-based route parses. Rerank scores are cosine
// similarities, so it always normalises and keeps every dimension.
json EmbedOptionProps(bool output_options) {
  json p = {
      {"instruction",
       Field("string",
             "Task instruction placed in the embed template; its tokens are excluded from "
             "the mean. Rerank routes apply it to the query only.")},
      {"pooling", Enum({"mean", "last"}, "Pooling over the text tokens.", "mean")},
      {"layer", Int("Early exit: pool the hidden states after this layer (1..num_hidden_layers) "
                    "instead of the final ones.",
                    1)},
      {"raw", Field("boolean",
                    "Bypass the prompt template: the text is tokenised as given and the mean runs "
                    "over all tokens.",
                    false)},
      {"truncate",
       Field("boolean",
             "Cut inputs longer than the token limit instead of answering 422. Only the "
             "text is cut, never the template.",
             false)},
      {"truncation_direction",
       Enum({"right", "left"}, "Which end of the text to cut (case-insensitive).", "right")},
  };
  p.update(ParseSpecialProp("the instruction and texts"));
  if (output_options) {
    p["normalize"] = Field("boolean", "L2-normalise the embeddings.", true);
    p["dimensions"] =
        Int("Keep only the first N dimensions (1..hidden_size, Matryoshka style).", 1);
  }
  return p;
}

// Sampling fields shared by the three generation routes; only max_tokens'
// default differs between them.
json SamplingProps(int default_max_tokens) {
  json max_tokens = Int("Tokens to generate at most, capped by the server's --max-tokens.", 1);
  max_tokens["default"] = default_max_tokens;
  return {
      {"max_tokens", max_tokens},
      {"max_completion_tokens", Int("Alias of max_tokens (OpenAI's newer name).", 1)},
      {"temperature",
       {{"type", "number"},
        {"minimum", 0},
        {"maximum", 10},
        {"default", 1},
        {"description", "Sampling temperature; 0 is greedy."}}},
      {"top_p",
       {{"type", "number"},
        {"exclusiveMinimum", 0},
        {"maximum", 1},
        {"default", 1},
        {"description", "Nucleus sampling mass; 1 turns it off."}}},
      {"top_k", Int("Sample among the k most likely tokens; 0 turns it off.", 0)},
      {"seed", Field("integer", "Random seed; a fresh one per request when omitted.")},
      {"stop", OneOf({{{"type", "string"}, {"minLength", 1}},
                      {{"type", "array"},
                       {"maxItems", 16},
                       {"items", {{"type", "string"}, {"minLength", 1}}}}},
                     "Stop strings; generation ends before the first one and it is not returned.")},
      {"ignore_eos", Field("boolean", "Keep generating past EOS up to max_tokens.", false)},
      {"n", {{"type", "integer"}, {"const", 1}, {"description", "One choice per request."}}},
      {"stream", Field("boolean", "Stream the answer as server-sent events.", false)},
  };
}

json StreamOptionsProps() {
  return {{"stream_options",
           Object({{"include_usage",
                    Field("boolean", "Send a last chunk with empty choices and the usage totals.",
                          false)}})}};
}

json ModelProp() {
  return {{"model", Field("string",
                          "Accepted for compatibility; any name is served by the "
                          "loaded model.")}};
}

// A document: a cached id (bare or {"id"}), a text, or (generation only) token ids.
json Documents(const std::string& description, bool tokens = false) {
  json forms = {T("string"), Object({{"id", T("string")}}, {"id"}),
                Object({{"text", T("string")}}, {"text"})};
  if (tokens) forms.push_back(Object({{"tokens", ArrayOf(T("integer"))}}, {"tokens"}));
  return ArrayOf(OneOf(forms), description);
}

// ---- Component schemas. ----

// One prompt, as /generate and /v1/completions take it.
json PromptSchema() {
  return OneOf({T("string"),
                {{"type", "array"}, {"items", T("string")}, {"maxItems", 1}},
                ArrayOf({{"type", "integer"}, {"minimum", 0}})},
               "One prompt: a string, a one-string list, or token ids (used as given).");
}

void AddErrorSchema(json& s) {
  s["Error"] =
      Object({{"error", Object({{"message", Field("string", "What went wrong, for people.")},
                                {"type", Field("string",
                                               "Machine-readable kind, e.g. invalid_request_error, "
                                               "authentication_error, not_found_error, "
                                               "payload_too_large, unprocessable_entity, "
                                               "queue_full, unavailable.")},
                                {"code", Field("integer", "The HTTP status code.")}},
                               {"message", "type", "code"})}},
             {"error"}, "The one error shape every route uses.");
}

void AddEmbedSchemas(json& s) {
  s["EmbedRequest"] = Object(
      Props(
          {{{"inputs", Inputs("Texts to embed")}},
           EmbedOptionProps(true),
           {{"cache", Field("boolean",
                            "Keep each input's per-layer keys and values from this embedding pass "
                            "in the document KV store, so /generate can reuse them via "
                            "\"documents\". Implied by \"ids\".",
                            false)},
            {"ids", ArrayOf(T("string"),
                            "Client names for the cached entries, one per input in order; "
                            "later usable in /generate \"documents\" and DELETE "
                            "/cache/{id}. Implies \"cache\": true.")}}}),
      {"inputs"}, "TEI-compatible embedding request.");
  s["EmbedResponse"] =
      ArrayOf(ArrayOf(T("number")), "One embedding per input, in input order (TEI shape).");

  s["OpenAiEmbeddingRequest"] = Object(
      Props({{{"input", Inputs("Texts to embed")},
              {"encoding_format",
               Enum({"float", "base64"},
                    "base64: the little-endian float32 bytes of each vector, base64-encoded.",
                    "float")}},
             ModelProp(),
             EmbedOptionProps(true)}),
      {"input"}, "OpenAI-compatible embedding request.");
  s["OpenAiEmbeddingResponse"] = Object(
      {{"object", {{"const", "list"}}},
       {"data", ArrayOf(Object(
                    {{"object", {{"const", "embedding"}}},
                     {"index", T("integer")},
                     {"embedding", OneOf({ArrayOf(T("number")),
                                          {{"type", "string"}, {"contentEncoding", "base64"}}})}},
                    {"object", "index", "embedding"}))},
       {"model", T("string")},
       {"usage", Object({{"prompt_tokens", T("integer")}, {"total_tokens", T("integer")}})}},
      {"object", "data", "model", "usage"});
}

void AddRerankSchemas(json& s) {
  s["RerankRequest"] = Object(
      Props({{{"query", Field("string", "The query; embedded with the instruction, if any.")},
              {"texts", Documents("Candidate texts, or {\"id\"} of entries cached by /embed "
                                  "(their stored embeddings are reused).")},
              {"raw_scores",
               Field("boolean", "Return the cosine in [-1, 1] instead of mapping it to [0, 1].",
                     false)},
              {"return_text", Field("boolean", "Echo each text in its result.", false)}},
             EmbedOptionProps(false)}),
      {"query", "texts"}, "TEI-compatible rerank request.");
  s["RerankResponse"] = ArrayOf(
      Object(
          {{"index", Int("Position in \"texts\".")}, {"score", T("number")}, {"text", T("string")}},
          {"index", "score"}),
      "Results sorted best first.");

  s["CohereRerankRequest"] = Object(
      Props({{{"query", T("string")},
              {"documents", Documents("Candidate documents.")},
              {"top_n", Int("Return only the best N results (default: all).", 1)},
              {"return_documents",
               Field("boolean", "Include each document as {\"text\"} in its result.", false)}},
             ModelProp(),
             EmbedOptionProps(false)}),
      {"query", "documents"}, "Cohere/Jina-compatible rerank request.");
  s["CohereRerankResponse"] = Object(
      {{"id", T("string")},
       {"model", T("string")},
       {"results",
        ArrayOf(Object({{"index", T("integer")},
                        {"relevance_score", Field("number", "Cosine similarity in [-1, 1].")},
                        {"document", Object({{"text", T("string")}})}},
                       {"index", "relevance_score"}),
                "Best first.")},
       {"usage", Object({{"total_tokens", T("integer")}})}},
      {"id", "model", "results", "usage"});
}

void AddGenerateSchemas(json& s) {
  s["Message"] = Object(
      {{"role", Enum({"system", "user", "assistant"}, "Who wrote the message.")},
       {"content",
        OneOf({T("string"), ArrayOf(Object({{"type", {{"const", "text"}}}, {"text", T("string")}},
                                           {"type", "text"}))},
              "Text, or a list of text parts that are concatenated.")}},
      {"role", "content"});

  json generate = Object(
      Props(
          {{{"prompt", PromptSchema()},
            {"messages", ArrayOf(Ref("Message"),
                                 "Chat messages, rendered with the model's chat template; "
                                 "takes precedence over \"prompt\".")},
            {"raw", Field("boolean", "Use the prompt text as given, without the template.", false)},
            {"return_tokens",
             Field("boolean", "Add the generated token ids as \"tokens\".", false)},
            {"documents",
             Documents("Documents the answer is generated over: ids of entries cached by "
                       "/embed (bare or {\"id\"}), {\"text\"} or {\"tokens\"} objects "
                       "(computed when not in the store). Their keys and values come from "
                       "the store, so only the prompt is prefilled. An unknown id is a 404.",
                       true)},
            {"kv_source",
             Enum({"embed", "causal"},
                  "embed: reuse the bidirectional embedding-pass KV as is (GritLM doc "
                  "caching, needs a GRIT-trained model); causal: build document KV with "
                  "causal attention (correct for any causal LM). Default from the model's "
                  "template config.")},
            {"positions",
             Enum({"sequential", "composite"},
                  "sequential: documents one after another, then the prompt; composite: "
                  "every document starts at position 0 and the prompt follows all of them.",
                  "sequential")}},
           ParseSpecialProp("the prompt, the messages' content and document texts"),
           SamplingProps(256)}),
      {}, "Native generation request; \"prompt\" or \"messages\" is required.");
  generate["anyOf"] = {{{"required", json::array({"prompt"})}},
                       {{"required", json::array({"messages"})}}};
  s["GenerateRequest"] = std::move(generate);

  s["GenerateResponse"] = Object(
      {{"text", T("string")},
       {"finish_reason", Enum({"stop", "length", "cancelled"},
                              "stop: EOS or a stop string; length: max_tokens reached.")},
       {"usage", Object({{"prompt_tokens", T("integer")},
                         {"cached_tokens", Int("Prompt tokens served from the KV store.")},
                         {"completion_tokens", T("integer")}})},
       {"timings", Object(Typed("number", {"ttft_ms", "prefill_ms", "documents_ms", "decode_ms"}))},
       {"tokens", ArrayOf(T("integer"), "Generated ids, with \"return_tokens\".")},
       {"full_text", Field("string",
                           "The whole answer; only in the last streamed event, "
                           "whose \"text\" is empty.")}},
      {"text", "finish_reason", "usage", "timings"});
  s["GenerateStreamEvent"] =
      OneOf({Object({{"text", T("string")}}, {"text"}, "A piece of the answer."),
             Ref("GenerateResponse"), Ref("Error")},
            "Pieces of text, then one final GenerateResponse with \"full_text\".");
}

void AddOpenAiGenerationSchemas(json& s) {
  s["Usage"] = Object(Typed("integer", {"prompt_tokens", "completion_tokens", "total_tokens"}),
                      {"prompt_tokens", "completion_tokens", "total_tokens"});
  const json finish = {{"type", {"string", "null"}},
                       {"enum", {"stop", "length", nullptr}},
                       {"description", "null in streamed chunks until the last one."}};

  s["CompletionRequest"] =
      Object(Props({{{"prompt", PromptSchema()}},
                    ModelProp(),
                    ParseSpecialProp("document texts (the prompt is always used as given)"),
                    SamplingProps(16),
                    StreamOptionsProps()}),
             {"prompt"}, "OpenAI-compatible completion; the prompt is used without a template.");
  s["Completion"] =
      Object({{"id", T("string")},
              {"object", {{"const", "text_completion"}}},
              {"created", Int("Unix time.")},
              {"model", T("string")},
              {"choices", ArrayOf(Object({{"text", T("string")},
                                          {"index", T("integer")},
                                          {"logprobs", T("null")},
                                          {"finish_reason", finish}}),
                                  "One choice; empty in the usage chunk of a stream.")},
              {"usage", Ref("Usage")}},
             {"id", "object", "created", "model", "choices"},
             "The response, and also each streamed chunk (without usage unless requested).");

  s["ChatCompletionRequest"] = Object(Props({{{"messages", ArrayOf(Ref("Message"))}},
                                             ModelProp(),
                                             ParseSpecialProp("the messages' content"),
                                             SamplingProps(512),
                                             StreamOptionsProps()}),
                                      {"messages"}, "OpenAI-compatible chat completion.");
  json chat_base = {{"id", T("string")}, {"created", Int("Unix time.")}, {"model", T("string")}};
  json message = Object({{"role", {{"const", "assistant"}}}, {"content", T("string")}});
  s["ChatCompletion"] = Object(Props({chat_base,
                                      {{"object", {{"const", "chat.completion"}}},
                                       {"choices", ArrayOf(Object({{"index", T("integer")},
                                                                   {"message", message},
                                                                   {"logprobs", T("null")},
                                                                   {"finish_reason", finish}}))},
                                       {"usage", Ref("Usage")}}}),
                               {"id", "object", "created", "model", "choices", "usage"});
  s["ChatCompletionChunk"] = Object(
      Props({chat_base,
             {{"object", {{"const", "chat.completion.chunk"}}},
              {"choices", ArrayOf(Object({{"index", T("integer")},
                                          {"delta", Object({{"role", {{"const", "assistant"}}},
                                                            {"content", T("string")}},
                                                           {}, "Empty in the last chunk.")},
                                          {"logprobs", T("null")},
                                          {"finish_reason", finish}}))},
              {"usage", Ref("Usage")}}}),
      {"id", "object", "created", "model", "choices"},
      "First chunk carries the role, then content pieces, then the finish reason.");
}

void AddTokenizerSchemas(json& s) {
  s["TokenizeRequest"] =
      Object({{"inputs", StringOrList("Texts to tokenise.")},
              {"add_special_tokens",
               Field("boolean",
                     "Add the tokeniser's special tokens (e.g. BOS). Special tokens spelled in "
                     "the text are recognised either way (as in Hugging Face and TEI).",
                     true)}},
             {"inputs"},
             "Each input may have at most the server's --max-input-tokens tokens (422 beyond).");
  s["Token"] = Object({{"id", T("integer")},
                       {"text", T("string")},
                       {"special", T("boolean")},
                       {"start", Int("Byte offset of the token's text in the input.")},
                       {"stop", Int("Byte offset one past the token's text.")}},
                      {"id", "text", "special", "start", "stop"});
  s["TokenizeResponse"] = ArrayOf(ArrayOf(Ref("Token")), "One token list per input (TEI shape).");
  json ids = ArrayOf({{"type", "integer"}, {"minimum", 0}});
  s["DetokenizeRequest"] = Object(
      {{"ids", OneOf({ids, ArrayOf(ids)}, "One id list, or a list of id lists.")},
       {"skip_special_tokens", Field("boolean", "Leave special tokens out of the text.", false)}},
      {"ids"});
  s["DetokenizeResponse"] = OneOf({T("string"), ArrayOf(T("string"))},
                                  "A string for one id list, a list for a list of lists.");
}

void AddInfoSchemas(json& s) {
  s["Info"] = Object(
      Props(
          {Typed("string", {"model_id", "model_dir", "architecture", "device", "dtype",
                            "dtype_requested", "weights", "tokenizer", "template", "version"}),
           Typed("integer",
                 {"parameters", "hidden_size", "num_hidden_layers", "vocab_size", "max_context"}),
           {{"limits", Object(Typed("integer", {"max_body_bytes", "max_inputs", "max_input_tokens",
                                                "max_tokens", "max_concurrent_requests",
                                                "max_batch_tokens"}))}},
           {{"cache_tiers",
             Object(Typed("string", {"memory", "disk", "redis"}), {"memory"},
                    "Each document store tier there is: \"ok\", or \"degraded\" while it "
                    "cannot be used (requests are then served by the others or recomputed).")}}}),
      {"model_id", "architecture", "limits", "version"});
  s["ModelList"] = Object({{"object", {{"const", "list"}}},
                           {"data", ArrayOf(Object({{"id", T("string")},
                                                    {"object", {{"const", "model"}}},
                                                    {"created", T("integer")},
                                                    {"owned_by", T("string")}}))}},
                          {"object", "data"});
  s["CacheStats"] = Object(
      {{"entries", Int("Documents held in memory.")},
       {"bytes", Int("Bytes of keys and values held in memory.")},
       {"hits", Int("Lookups served from the store.")},
       {"misses", Int("Lookups that had to compute the document.")},
       {"evictions", Int("Entries dropped to stay under the byte budget.")},
       {"disk_reads", Int("Entries loaded from the disk tier.")},
       {"disk_writes", Int("Entries written to the disk tier.")},
       {"disk_errors", Int("Damaged or foreign disk files dropped.")},
       {"disk_write_errors",
        Int("Entry or id files that could not be written (serving continues from "
            "memory).")},
       {"disk_files", Int("Entry and id files in the disk tier.")},
       {"disk_bytes", Int("Bytes of those files.")},
       {"disk_budget_bytes", Int("The disk tier's budget (--cache-disk-bytes).")},
       {"disk_evictions", Int("Entry files removed to stay under the disk budget.")},
       {"id_bytes", Int("Memory the ids take (token ids, names, bookkeeping).")},
       {"id_evictions",
        Int("Ids forgotten: past the id budget, or with their entry's evicted file.")},
       {"computed", Int("Entries computed by a forward pass for a generation.")},
       {"tiers",
        Object({{"memory", T("object")}, {"disk", T("object")}, {"redis", T("object")}}, {"memory"},
               "Per tier: state (ok or degraded), hits, misses, bytes; for redis also "
               "id_hits, id_misses, read_bytes, writes, written_bytes, write_drops, "
               "errors, outages, corrupt, url and prefix.")}},
      {"entries", "bytes", "hits", "misses", "evictions", "disk_reads", "disk_writes"},
      "Document KV store statistics.");
}

json Schemas() {
  json s;
  AddErrorSchema(s);
  AddEmbedSchemas(s);
  AddRerankSchemas(s);
  AddGenerateSchemas(s);
  AddOpenAiGenerationSchemas(s);
  AddTokenizerSchemas(s);
  AddInfoSchemas(s);
  AddCollectionSchemas(s);
  return s;
}

json Components() {
  json responses = json::object();
  for (const ErrorStatus& e : kErrors) {
    responses[e.name] = {{"description", e.description}, {"content", JsonBody(Ref("Error"))}};
  }
  return {
      {"schemas", Schemas()},
      {"responses", responses},
      {"securitySchemes",
       {{"bearerAuth",
         {{"type", "http"},
          {"scheme", "bearer"},
          {"description",
           "`Authorization: Bearer KEY`; enforced only when the server was started with "
           "--api-key. /health never needs it."}}},
        {"apiKeyHeader",
         {{"type", "apiKey"},
          {"in", "header"},
          {"name", "x-api-key"},
          {"description", "Alternative to the bearer header, with the same key."}}}}},
  };
}

json Paths() {
  json p;
  p["/embed"]["post"] = PostJson(
      "embed", "embeddings", "Embed texts (TEI); optionally keep their KV in the document store.",
      Ref("EmbedRequest"), Ref("EmbedResponse"), kModelErrors);
  p["/v1/embeddings"]["post"] =
      PostJson("createEmbeddings", "embeddings", "Embed texts (OpenAI).",
               Ref("OpenAiEmbeddingRequest"), Ref("OpenAiEmbeddingResponse"), kModelErrors);
  p["/rerank"]["post"] =
      PostJson("rerank", "rerank", "Score texts against a query by embedding cosine (TEI).",
               Ref("RerankRequest"), Ref("RerankResponse"), kModelErrors);
  p["/v1/rerank"]["post"] =
      PostJson("createRerank", "rerank", "Score documents against a query (Cohere/Jina).",
               Ref("CohereRerankRequest"), Ref("CohereRerankResponse"), kModelErrors);
  p["/generate"]["post"] = PostJson(
      "generate", "generation",
      "Generate text, optionally over cached documents (prefill only the prompt).",
      Ref("GenerateRequest"), Ref("GenerateResponse"), kGenerateErrors, Ref("GenerateStreamEvent"));
  p["/v1/completions"]["post"] =
      PostJson("createCompletion", "generation", "Complete a prompt (OpenAI).",
               Ref("CompletionRequest"), Ref("Completion"), kModelErrors, Ref("Completion"));
  p["/v1/chat/completions"]["post"] =
      PostJson("createChatCompletion", "generation", "Answer a conversation (OpenAI).",
               Ref("ChatCompletionRequest"), Ref("ChatCompletion"), kModelErrors,
               Ref("ChatCompletionChunk"));
  p["/tokenize"]["post"] =
      PostJson("tokenize", "tokenizer", "Tokenise texts, with byte offsets (TEI).",
               Ref("TokenizeRequest"), Ref("TokenizeResponse"), kBodyErrors);
  p["/detokenize"]["post"] =
      PostJson("detokenize", "tokenizer", "Turn token ids back into text.",
               Ref("DetokenizeRequest"), Ref("DetokenizeResponse"), kBodyErrors);

  // /health answers without a key so that load balancers need no secret, and
  // reports loading or draining as 503.
  json health =
      JsonOp("health", "info", "Liveness and readiness.",
             Object({{"status", {{"const", "ok"}}}}, {"status"}), {ErrorKind::kUnavailable});
  health["security"] = json::array();
  p["/health"]["get"] = std::move(health);
  p["/info"]["get"] =
      JsonOp("info", "info", "The loaded model and the server's limits.", Ref("Info"), kGetErrors);
  p["/v1/models"]["get"] =
      JsonOp("listModels", "info", "The served model (OpenAI).", Ref("ModelList"), kGetErrors);
  p["/metrics"]["get"] = Operation("metrics", "info", "Prometheus metrics.",
                                   {{"description", "Prometheus text exposition format 0.0.4."},
                                    {"content", {{"text/plain", {{"schema", T("string")}}}}}},
                                   kGetErrors);
  p["/openapi.json"]["get"] =
      JsonOp("openapi", "info", "This document.", {{"type", "object"}}, {ErrorKind::kUnauthorized});
  p["/cache"]["get"] =
      JsonOp("cacheStats", "cache", "Document KV store statistics.", Ref("CacheStats"), kGetErrors);

  json remove =
      JsonOp("deleteCacheEntry", "cache", "Evict one cached document.",
             Object({{"id", T("string")}, {"deleted", {{"const", true}}}}, {"id", "deleted"}),
             {ErrorKind::kUnauthorized, ErrorKind::kNotFound, ErrorKind::kUnavailable});
  remove["parameters"] = {{{"name", "id"},
                           {"in", "path"},
                           {"required", true},
                           {"description", "A client id given to /embed in \"ids\"."},
                           {"schema", T("string")}}};
  p["/cache/{id}"]["delete"] = std::move(remove);
  AddCollectionPaths(p);
  return p;
}

}  // namespace

json OpenApiSpec() {
  return {
      {"openapi", "3.1.0"},
      {"info",
       {{"title", "gritserve"},
        {"version", "0.1.0"},
        {"description",
         "Embedding, reranking and generation with one decoder model, with a document KV "
         "cache shared between /embed and /generate. Every error has the body "
         "{\"error\": {\"message\", \"type\", \"code\"}}."}}},
      {"tags",
       {{{"name", "embeddings"}},
        {{"name", "rerank"}},
        {{"name", "generation"}},
        {{"name", "tokenizer"}},
        {{"name", "cache"}},
        {{"name", "collections"}},
        {{"name", "info"}}}},
      {"security", {{{"bearerAuth", json::array()}}, {{"apiKeyHeader", json::array()}}}},
      {"paths", Paths()},
      {"components", Components()},
  };
}

}  // namespace gritserve
