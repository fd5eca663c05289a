// Request parsing and response helpers shared by the route files.
#pragma once

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gritserve/common/error.h"

namespace gritserve::http {

using nlohmann::json;

int StatusFor(ErrorKind kind);
void SendError(httplib::Response& res, int status, const std::string& message,
               const std::string& type);
void SendError(httplib::Response& res, const Error& e);
void SendJson(httplib::Response& res, const json& body, int status = 200);

// Parses a request body: 400 for malformed JSON, nesting deeper than 64 levels,
// or a top level that is not an object.
json ParseBody(const std::string& body);

// Typed field access: 400 when the field has the wrong type, 422 when out of range.
std::optional<std::string> OptString(const json& j, const char* key);
std::optional<bool> OptBool(const json& j, const char* key);
std::optional<int64_t> OptInt(const json& j, const char* key, int64_t lo, int64_t hi);
std::optional<double> OptNumber(const json& j, const char* key, double lo, double hi);
std::optional<uint64_t> OptSeed(const json& j, const char* key);
// A string or a list of strings (at most `max_items`, 413 beyond).
std::optional<std::vector<std::string>> OptStringList(const json& j, const char* key,
                                                      int64_t max_items);

// Inputs as TEI and OpenAI accept them: a string, a list of strings, a list of
// token ids, or a list of lists of token ids. Exactly one of the two is filled.
struct Inputs {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> ids;
  size_t size() const { return texts.empty() ? ids.size() : texts.size(); }
};
Inputs ParseInputs(const json& j, const char* key, int64_t max_items, int64_t vocab_size);

// Strict UTF-8 check for user text (422 when invalid).
void RequireUtf8(const std::string& s, const char* what);

std::string Base64(const void* data, size_t size);
std::string RandomId(const std::string& prefix);
int64_t UnixTime();

}  // namespace gritserve::http
