#include "gritserve/common/error.h"

namespace gritserve {

const char* ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidRequest:
      return "invalid_request_error";
    case ErrorKind::kUnauthorized:
      return "authentication_error";
    case ErrorKind::kNotFound:
      return "not_found_error";
    case ErrorKind::kMethodNotAllowed:
      return "method_not_allowed";
    case ErrorKind::kConflict:
      return "conflict";
    case ErrorKind::kTimeout:
      return "request_timeout";
    case ErrorKind::kLengthRequired:
      return "length_required";
    case ErrorKind::kTooLarge:
      return "payload_too_large";
    case ErrorKind::kHeaderTooLarge:
      return "header_fields_too_large";
    case ErrorKind::kUnprocessable:
      return "unprocessable_entity";
    case ErrorKind::kQueueFull:
      return "queue_full";
    case ErrorKind::kUnavailable:
      return "unavailable";
    case ErrorKind::kLoad:
      return "load_error";
    case ErrorKind::kInternal:
      return "internal_error";
  }
  return "internal_error";
}

}  // namespace gritserve
