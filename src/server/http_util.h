// Request parsing and response helpers shared by the route files.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gritserve/common/error.h"
#include "gritserve/common/json_fields.h"
#include "http_server.h"

namespace gritserve::http {

using nlohmann::json;

// The one place an ErrorKind becomes an HTTP status.
int StatusFor(ErrorKind kind);
// {"error": {"message", "type", "code"}}: a response body, or a stream's last event.
json ErrorBody(const Error& e);
void SendError(Response& res, const Error& e);
void SendJson(Response& res, const json& body, int status = 200);

// Parses a request body: 400 for malformed JSON, nesting deeper than 64 levels,
// or a top level that is not an object.
json ParseBody(const std::string& body);

// Inputs as TEI and OpenAI accept them: a string, a list of strings, a list of
// token ids, or a list of lists of token ids. Exactly one of the two is filled.
struct Inputs {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> ids;
  size_t size() const { return texts.empty() ? ids.size() : texts.size(); }
};
Inputs ParseInputs(const JsonFields& fields, const char* key, int64_t max_items,
                   int64_t vocab_size);

// Strict UTF-8 check for user text (422 when invalid). ParseBody's lexer already
// refuses ill-formed UTF-8, so this guards the text that reaches the tokenizer,
// the document store or a response against a parser that someday lets it by.
void RequireUtf8(const std::string& s, const char* what);

std::string Base64(const void* data, size_t size);
std::string RandomId(const std::string& prefix);
int64_t UnixTime();

}  // namespace gritserve::http
