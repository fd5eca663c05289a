#include "http_util.h"

#include <openssl/evp.h>
#include <utf8proc.h>

#include <chrono>
#include <random>

namespace gritserve::http {

int StatusFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidRequest:
      return 400;
    case ErrorKind::kUnauthorized:
      return 401;
    case ErrorKind::kNotFound:
      return 404;
    case ErrorKind::kMethodNotAllowed:
      return 405;
    case ErrorKind::kConflict:
      return 409;
    case ErrorKind::kTimeout:
      return 408;
    case ErrorKind::kLengthRequired:
      return 411;
    case ErrorKind::kTooLarge:
      return 413;
    case ErrorKind::kHeaderTooLarge:
      return 431;
    case ErrorKind::kUnprocessable:
      return 422;
    case ErrorKind::kQueueFull:
      return 429;
    case ErrorKind::kUnavailable:
      return 503;
    case ErrorKind::kLoad:
      return 500;
    case ErrorKind::kInternal:
      return 500;
  }
  return 500;
}

void SendJson(Response& res, const json& body, int status) {
  res.status = status;
  res.content_type = "application/json";
  // Invalid UTF-8 from a model (never from us) is replaced rather than thrown on.
  res.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
}

json ErrorBody(const Error& e) {
  const int status = StatusFor(e.kind());
  return {{"error", {{"message", e.message()}, {"type", ErrorKindName(e.kind())}, {"code", status}}}};
}

void SendError(Response& res, const Error& e) { SendJson(res, ErrorBody(e), StatusFor(e.kind())); }

json ParseBody(const std::string& body) {
  constexpr int kMaxDepth = 64;
  json j;
  try {
    j = json::parse(body, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth) throw InvalidRequest("JSON nested deeper than 64 levels");
      return true;
    });
  } catch (const json::exception& e) {
    // nlohmann's lexer rejects invalid UTF-8 (and unpaired \u surrogates) inside
    // strings as a parse error, but by the API contract that is a well-formed
    // request with an unusable value (422), like invalid UTF-8 found later by
    // RequireUtf8. Its messages are the only way to tell these apart.
    const std::string what = e.what();
    if (what.find("invalid string: ill-formed UTF-8") != std::string::npos ||
        what.find("invalid string: surrogate") != std::string::npos) {
      throw Unprocessable("a string in the request is not valid UTF-8: " + what);
    }
    throw InvalidRequest(std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) throw InvalidRequest("the request body must be a JSON object");
  return j;
}

void RequireUtf8(const std::string& s, const char* what) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) throw Unprocessable(std::string(what) + " is not valid UTF-8");
    p += n;
    left -= n;
  }
}

namespace {
std::vector<int32_t> TokenIds(const json& arr, const char* key, int64_t vocab_size) {
  std::vector<int32_t> ids;
  ids.reserve(arr.size());
  for (const auto& e : arr) {
    if (!e.is_number_integer()) {
      throw InvalidRequest(std::string("'") + key + "': token ids must be integers");
    }
    const int64_t v =
        e.is_number_unsigned() && e.get<uint64_t>() > (1ULL << 40) ? (1LL << 40) : e.get<int64_t>();
    if (v < 0 || v >= vocab_size) {
      throw Unprocessable(std::string("'") + key + "': token id " + std::to_string(v) +
                          " is outside the vocabulary (size " + std::to_string(vocab_size) + ")");
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}
}  // namespace

Inputs ParseInputs(const JsonFields& fields, const char* key, int64_t max_items,
                   int64_t vocab_size) {
  const json* f = fields.Find(key);
  if (!f) throw fields.Missing(key);
  Inputs in;
  const std::string shape_msg = std::string("'") + key +
                                "' must be a string, a list of strings, a list of token ids, "
                                "or a list of lists of token ids";
  if (f->is_string()) {
    in.texts.push_back(f->get<std::string>());
  } else if (f->is_array()) {
    if (f->empty()) throw Unprocessable(std::string("'") + key + "' is empty");
    if (static_cast<int64_t>(f->size()) > max_items && !(*f)[0].is_number()) {
      throw Error(ErrorKind::kTooLarge, std::string("'") + key + "' has " +
                                            std::to_string(f->size()) + " inputs; the limit is " +
                                            std::to_string(max_items));
    }
    const json& first = (*f)[0];
    if (first.is_string()) {
      for (const auto& e : *f) {
        if (!e.is_string()) throw InvalidRequest(shape_msg);
        in.texts.push_back(e.get<std::string>());
      }
    } else if (first.is_number()) {
      in.ids.push_back(TokenIds(*f, key, vocab_size));
    } else if (first.is_array()) {
      for (const auto& e : *f) {
        if (!e.is_array()) throw InvalidRequest(shape_msg);
        in.ids.push_back(TokenIds(e, key, vocab_size));
      }
    } else {
      throw InvalidRequest(shape_msg);
    }
  } else {
    throw InvalidRequest(shape_msg);
  }
  for (const auto& t : in.texts) RequireUtf8(t, key);
  for (const auto& t : in.texts) {
    if (t.empty()) throw Unprocessable(std::string("'") + key + "' contains an empty string");
  }
  for (const auto& ids : in.ids) {
    if (ids.empty()) throw Unprocessable(std::string("'") + key + "' contains an empty token list");
  }
  return in;
}

std::string Base64(const void* data, size_t size) {
  std::string out(4 * ((size + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                static_cast<const unsigned char*>(data), static_cast<int>(size));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string RandomId(const std::string& prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = prefix;
  uint64_t a = rng(), b = rng();
  for (int i = 0; i < 16; ++i) id += hex[(a >> (4 * i)) & 15];
  for (int i = 0; i < 8; ++i) id += hex[(b >> (4 * i)) & 15];
  return id;
}

int64_t UnixTime() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace gritserve::http
