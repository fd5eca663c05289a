// Typed access to the fields of a parsed JSON object: the one accessor family
// for requests, config.json, tokenizer.json and templates. Where the object
// came from decides what a bad field raises: a request's is the client's
// fault (400 for a wrong type, 422 for a value out of range), a file's is a
// LoadError naming the file.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gritserve/common/error.h"

namespace gritserve {

// It refers to the object it reads, which must outlive it.
class JsonFields {
 public:
  // A request body (or an object inside one): messages name the field alone.
  static JsonFields Request(const nlohmann::json& object);
  // An object read from a file: messages start with `where` ("config.json")
  // and show the offending value.
  static JsonFields File(const nlohmann::json& object, std::string where);
  // The same source, for an object nested in this one.
  JsonFields Nested(const nlohmann::json& object) const;
  // A temporary object would be gone before its fields are read.
  static JsonFields Request(nlohmann::json&&) = delete;
  static JsonFields File(nlohmann::json&&, std::string) = delete;
  JsonFields Nested(nlohmann::json&&) const = delete;

  const nlohmann::json& object() const { return j_; }
  // Present and not null (null counts as absent everywhere).
  bool Has(const char* key) const;
  // The field itself, or nullptr when absent or null.
  const nlohmann::json* Find(const char* key) const;

  // Absent: nullopt. A wrong type: the source's type error.
  std::optional<std::string> String(const char* key) const;
  std::optional<bool> Bool(const char* key) const;
  // Integers; an integral float (16.0, 1e300) counts, saturated into the range check.
  std::optional<int64_t> Int(const char* key, int64_t lo = std::numeric_limits<int64_t>::min(),
                             int64_t hi = std::numeric_limits<int64_t>::max()) const;
  std::optional<double> Number(const char* key,
                               double lo = -std::numeric_limits<double>::infinity(),
                               double hi = std::numeric_limits<double>::infinity()) const;
  // Any integer, negative ones wrapped (a seed).
  std::optional<uint64_t> Uint(const char* key) const;
  // A string or a list of strings; more than `max_items` is kTooLarge.
  std::optional<std::vector<std::string>> StringList(
      const char* key, int64_t max_items = std::numeric_limits<int64_t>::max()) const;

  // Present, or the source's error saying it is missing.
  int64_t RequireInt(const char* key, int64_t lo = std::numeric_limits<int64_t>::min(),
                     int64_t hi = std::numeric_limits<int64_t>::max()) const;
  std::string RequireString(const char* key) const;

  // The source's errors, for checks the accessors above do not cover.
  Error TypeError(const char* key, const std::string& expected) const;
  Error RangeError(const char* key, const std::string& message) const;
  Error Missing(const char* key) const;

 private:
  JsonFields(const nlohmann::json& j, std::string where, bool request)
      : j_(j), where_(std::move(where)), request_(request) {}
  std::string Name(const char* key) const;

  const nlohmann::json& j_;
  std::string where_;
  bool request_;
};

}  // namespace gritserve
