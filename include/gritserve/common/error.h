// Typed errors. Library code throws gritserve::Error; the server maps ErrorKind
// to an HTTP status in exactly one place, the CLI to an exit code.
#pragma once

#include <stdexcept>
#include <string>

namespace gritserve {

enum class ErrorKind {
  kInvalidRequest,    // 400: malformed JSON, wrong types
  kUnauthorized,      // 401
  kNotFound,          // 404: unknown route, unknown document id
  kMethodNotAllowed,  // 405
  kConflict,          // 409: a name that already exists (collections)
  kTimeout,           // 408: the request did not arrive within its deadline
  kLengthRequired,    // 411: a body with neither Content-Length nor chunked framing
  kTooLarge,          // 413: body or batch over a limit
  kHeaderTooLarge,    // 431: request header fields over the limit
  kUnprocessable,     // 422: well-formed but unusable values (bad UTF-8, too many tokens)
  kQueueFull,         // 429
  kUnavailable,       // 503: loading or shutting down
  kLoad,              // checkpoint / tokenizer / config could not be loaded
  kInternal,          // a bug; never expected
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind), message_(message) {}
  ErrorKind kind() const { return kind_; }
  // The whole message: what() ends at the first NUL byte a client's text may hold.
  const std::string& message() const { return message_; }

 private:
  ErrorKind kind_;
  std::string message_;
};

inline Error LoadError(const std::string& m) { return Error(ErrorKind::kLoad, m); }
inline Error InvalidRequest(const std::string& m) { return Error(ErrorKind::kInvalidRequest, m); }
inline Error Unprocessable(const std::string& m) { return Error(ErrorKind::kUnprocessable, m); }
inline Error NotFound(const std::string& m) { return Error(ErrorKind::kNotFound, m); }

// Name of the kind, used as the "type" field of error responses.
const char* ErrorKindName(ErrorKind kind);

}  // namespace gritserve
