// The collection routes' part of /openapi.json (routes_collections.cc), and the
// "retrieve" field they add to the generation routes.
#include <string>
#include <utility>

#include "openapi.h"

namespace gritserve {
namespace {

using nlohmann::json;

json Ref(const std::string& name) { return {{"$ref", "#/components/schemas/" + name}}; }
json T(const char* type) { return {{"type", type}}; }
json Described(json schema, const std::string& description) {
  schema["description"] = description;
  return schema;
}
json Object(json properties, json required = json::array()) {
  json s = {{"type", "object"}, {"properties", std::move(properties)}};
  if (!required.empty()) s["required"] = std::move(required);
  return s;
}

// Error responses by their names in components/responses (openapi.cc).
json Responses(json ok, std::initializer_list<std::pair<const char*, const char*>> errors,
               const char* ok_status = "200") {
  json r = {{ok_status,
             {{"description", "Success."},
              {"content", {{"application/json", {{"schema", std::move(ok)}}}}}}}};
  for (const auto& [code, name] : errors) {
    r[code] = {{"$ref", std::string("#/components/responses/") + name}};
  }
  return r;
}

json Op(const char* id, const std::string& summary, json responses, json request = nullptr) {
  json op = {{"operationId", id},
             {"tags", {"collections"}},
             {"summary", summary},
             {"responses", std::move(responses)}};
  if (!request.is_null()) {
    op["requestBody"] = {{"required", true},
                         {"content", {{"application/json", {{"schema", std::move(request)}}}}}};
  }
  return op;
}

json PathParam(const char* name, const char* description) {
  return {{"name", name},
          {"in", "path"},
          {"required", true},
          {"description", description},
          {"schema", T("string")}};
}

const std::initializer_list<std::pair<const char*, const char*>> kSearchErrors = {
    {"400", "BadRequest"},    {"401", "Unauthorized"}, {"404", "NotFound"},
    {"422", "Unprocessable"}, {"429", "QueueFull"},    {"503", "Unavailable"}};

}  // namespace

void AddCollectionSchemas(json& s) {
  s["CollectionRequest"] = Object(
      {{"name", Described(T("string"), "1-64 characters of A-Z, a-z, 0-9, '_' and '-'.")},
       {"document_instruction", Described(T("string"), "Instruction documents are embedded with.")},
       {"query_instruction", Described(T("string"), "Instruction questions are embedded with.")},
       {"kv_source",
        {{"type", "string"},
         {"enum", {"embed", "causal"}},
         {"description",
          "embed: keep each document's K/V from its embedding pass; causal: "
          "build causal K/V on first use. Default from the template."}}}},
      {"name"});
  s["Collection"] = Object({{"name", T("string")},
                            {"document_instruction", T("string")},
                            {"query_instruction", T("string")},
                            {"kv_source", T("string")},
                            {"documents", T("integer")},
                            {"index", {{"type", "string"}, {"enum", {"exact", "hnsw"}}}}});
  s["CollectionDocumentsRequest"] = Object(
      {{"documents",
        {{"type", "array"},
         {"description", "At most --max-collection-batch; an id already stored is replaced."},
         {"items", Object({{"id", Described(T("string"), "1-256 bytes, without '#'.")},
                           {"text", T("string")},
                           {"metadata", T("object")}},
                          {"id", "text"})}}},
       {"chunking", Object({{"tokens", T("integer")}, {"overlap", T("integer")}})}},
      {"documents"});
  json search_fields = {
      {"top_k", T("integer")},
      {"min_score", Described(T("number"), "Cosine below which hits are dropped.")},
      {"filter", Described(T("object"), "Top-level metadata keys and the values they must equal.")},
      {"rerank", Described(T("boolean"),
                           "Re-score the best candidates as /rerank does (texts embedded "
                           "without the document instruction).")}};
  json search = search_fields;
  search["query"] = T("string");
  search["return_text"] = T("boolean");
  search["return_metadata"] = T("boolean");
  s["CollectionSearchRequest"] = Object(search, {"query"});
  s["CollectionSearchResponse"] = Object({{"results",
                                           {{"type", "array"},
                                            {"items", Object({{"id", T("string")},
                                                              {"score", T("number")},
                                                              {"text", T("string")},
                                                              {"metadata", T("object")}})}}}});
  json retrieve = search_fields;
  retrieve["collection"] = T("string");
  retrieve["query"] = Described(T("string"),
                                "What to search with; the prompt (or the last user message) "
                                "when absent.");
  retrieve["cache_query"] = Described(
      T("boolean"),
      "Also place the question's K/V, kept from its embedding pass (query instruction, "
      "bidirectional), after the documents: GritLM's Doc-Query caching. Needs kv_source embed.");
  s["Retrieve"] = Described(Object(retrieve, {"collection"}),
                            "Embed the question with the collection's query instruction, search, "
                            "and place the hits' K/V before the prompt.");
  json retrieved = {{"type", "array"},
                    {"description", "The documents \"retrieve\" placed, best first."},
                    {"items", Object({{"id", T("string")}, {"score", T("number")}})}};
  for (const char* req : {"GenerateRequest", "CompletionRequest", "ChatCompletionRequest"}) {
    if (s.contains(req)) s[req]["properties"]["retrieve"] = Ref("Retrieve");
  }
  for (const char* res : {"GenerateResponse", "Completion", "ChatCompletion"}) {
    if (s.contains(res)) s[res]["properties"]["retrieved"] = retrieved;
  }
}

void AddCollectionPaths(json& p) {
  const json name = PathParam("name", "The collection's name.");
  p["/v1/collections"]["post"] = Op("createCollection", "Create a collection.",
                                    Responses(Ref("Collection"),
                                              {{"400", "BadRequest"},
                                               {"401", "Unauthorized"},
                                               {"409", "Conflict"},
                                               {"413", "PayloadTooLarge"},
                                               {"422", "Unprocessable"},
                                               {"503", "Unavailable"}},
                                              "201"),
                                    Ref("CollectionRequest"));
  p["/v1/collections"]["get"] =
      Op("listCollections", "Every collection.",
         Responses(Object({{"collections", {{"type", "array"}, {"items", Ref("Collection")}}}}),
                   {{"401", "Unauthorized"}, {"503", "Unavailable"}}));
  p["/v1/collections/{name}"]["get"] =
      Op("getCollection", "One collection.",
         Responses(Ref("Collection"),
                   {{"401", "Unauthorized"}, {"404", "NotFound"}, {"503", "Unavailable"}}));
  p["/v1/collections/{name}"]["delete"] =
      Op("deleteCollection", "Drop a collection, its files and its documents' K/V.",
         Responses(T("object"),
                   {{"401", "Unauthorized"}, {"404", "NotFound"}, {"503", "Unavailable"}}));
  p["/v1/collections/{name}"]["parameters"] = {name};
  p["/v1/collections/{name}/documents"]["post"] =
      Op("addDocuments",
         "Embed documents with the document instruction (their K/V kept from the same pass) and "
         "add them; nothing is stored when any is refused.",
         Responses(Object({{"ids", {{"type", "array"}, {"items", T("string")}}},
                           {"stored", T("integer")},
                           {"documents", T("integer")}}),
                   {{"400", "BadRequest"},
                    {"401", "Unauthorized"},
                    {"404", "NotFound"},
                    {"413", "PayloadTooLarge"},
                    {"422", "Unprocessable"},
                    {"429", "QueueFull"},
                    {"503", "Unavailable"}}),
         Ref("CollectionDocumentsRequest"));
  p["/v1/collections/{name}/documents"]["parameters"] = {name};
  p["/v1/collections/{name}/documents/{id}"]["delete"] =
      Op("deleteDocument", "Remove a document (or every chunk of it) and free its K/V.",
         Responses(T("object"),
                   {{"401", "Unauthorized"}, {"404", "NotFound"}, {"503", "Unavailable"}}));
  p["/v1/collections/{name}/documents/{id}"]["parameters"] = {
      name, PathParam("id", "A document id (all its chunks) or a chunk id.")};
  p["/v1/collections/{name}/search"]["post"] =
      Op("searchCollection", "The documents nearest a question, best first.",
         Responses(Ref("CollectionSearchResponse"), kSearchErrors), Ref("CollectionSearchRequest"));
  p["/v1/collections/{name}/search"]["parameters"] = {name};
}

}  // namespace gritserve
