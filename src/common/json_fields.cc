#include "gritserve/common/json_fields.h"

#include <cmath>

namespace gritserve {

using nlohmann::json;

JsonFields JsonFields::Request(const json& object) { return JsonFields(object, "", true); }

JsonFields JsonFields::File(const json& object, std::string where) {
  return JsonFields(object, std::move(where), false);
}

JsonFields JsonFields::Nested(const json& object) const {
  return JsonFields(object, where_, request_);
}

std::string JsonFields::Name(const char* key) const {
  return (request_ ? "'" : where_ + ": key '") + key + "'";
}

Error JsonFields::TypeError(const char* key, const std::string& expected) const {
  std::string m = Name(key) + " must be " + expected;
  if (!request_) {
    const json* f = Find(key);
    if (f != nullptr) m += ", got " + f->dump();
    return LoadError(m);
  }
  return InvalidRequest(m);
}

Error JsonFields::RangeError(const char* key, const std::string& message) const {
  return request_ ? Unprocessable(Name(key) + " " + message) : LoadError(Name(key) + " " + message);
}

Error JsonFields::Missing(const char* key) const {
  if (request_) return InvalidRequest("'" + std::string(key) + "' is required");
  return LoadError(where_ + ": missing required key '" + key + "'");
}

const json* JsonFields::Find(const char* key) const {
  if (!j_.is_object()) return nullptr;
  auto it = j_.find(key);
  if (it == j_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonFields::Has(const char* key) const { return Find(key) != nullptr; }

std::optional<std::string> JsonFields::String(const char* key) const {
  const json* f = Find(key);
  if (f == nullptr) return std::nullopt;
  if (!f->is_string()) throw TypeError(key, "a string");
  return f->get<std::string>();
}

std::optional<bool> JsonFields::Bool(const char* key) const {
  const json* f = Find(key);
  if (f == nullptr) return std::nullopt;
  if (!f->is_boolean()) throw TypeError(key, "a boolean");
  return f->get<bool>();
}

std::optional<int64_t> JsonFields::Int(const char* key, int64_t lo, int64_t hi) const {
  const json* f = Find(key);
  if (f == nullptr) return std::nullopt;
  int64_t v = 0;
  if (f->is_number_integer()) {
    if (f->is_number_unsigned() &&
        f->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      // A request's is merely out of range (422 below); a file's is refused as
      // such, never read as a (huge) size.
      if (!request_) throw RangeError(key, "is too large, got " + f->dump());
      v = std::numeric_limits<int64_t>::max();
    } else {
      v = f->get<int64_t>();
    }
  } else if (request_ && f->is_number_float() && std::isfinite(f->get<double>()) &&
             std::floor(f->get<double>()) == f->get<double>()) {
    // 16.0 is an integer too, and so are 1e300 and 99999999999999999999 (which
    // nlohmann stores as a double): those are out of range (422), not of the
    // wrong type, so saturate them into the range check below.
    const double d = f->get<double>();
    constexpr double kLimit = 9.2e18;  // just inside int64_t
    v = d >= kLimit    ? std::numeric_limits<int64_t>::max()
        : d <= -kLimit ? std::numeric_limits<int64_t>::min()
                       : static_cast<int64_t>(d);
  } else {
    throw TypeError(key, "an integer");
  }
  if (v < lo || v > hi) {
    throw RangeError(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                              ", got " + f->dump());
  }
  return v;
}

std::optional<double> JsonFields::Number(const char* key, double lo, double hi) const {
  const json* f = Find(key);
  if (f == nullptr) return std::nullopt;
  if (!f->is_number()) throw TypeError(key, "a number");
  const double v = f->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    throw RangeError(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  }
  return v;
}

std::optional<uint64_t> JsonFields::Uint(const char* key) const {
  const json* f = Find(key);
  if (f == nullptr) return std::nullopt;
  if (f->is_number_unsigned()) return f->get<uint64_t>();
  if (f->is_number_integer()) return static_cast<uint64_t>(f->get<int64_t>());
  throw TypeError(key, "an integer");
}

std::optional<std::vector<std::string>> JsonFields::StringList(const char* key,
                                                               int64_t max_items) const {
  const json* f = Find(key);
  if (f == nullptr) return std::nullopt;
  std::vector<std::string> out;
  if (f->is_string()) {
    out.push_back(f->get<std::string>());
    return out;
  }
  if (!f->is_array()) throw TypeError(key, "a string or a list of strings");
  if (static_cast<int64_t>(f->size()) > max_items) {
    throw Error(ErrorKind::kTooLarge,
                Name(key) + " has more than " + std::to_string(max_items) + " items");
  }
  for (const auto& e : *f) {
    if (!e.is_string()) throw TypeError(key, "a string or a list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

int64_t JsonFields::RequireInt(const char* key, int64_t lo, int64_t hi) const {
  if (!Has(key)) throw Missing(key);
  return *Int(key, lo, hi);
}

std::string JsonFields::RequireString(const char* key) const {
  if (!Has(key)) throw Missing(key);
  return *String(key);
}

}  // namespace gritserve
