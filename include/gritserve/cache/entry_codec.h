// The bytes of a document store entry and of a client id, as the disk tier's
// files and the Redis tier's values hold them: one format for both, so that
// every copy outside memory carries the same header and checksum and is
// checked the same way before use.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "gritserve/cache/doc_kv_store.h"

namespace gritserve {

// magic (8) | header length (8) | header JSON | payload | XXH3-64 of header and payload (8).
// The header names the key, the model fingerprint, dtype and shapes; the
// payload holds each layer's keys then values, then the pooled vectors.
std::string EncodeEntry(const DocKvEntry& entry, const std::string& fingerprint);

// The entry `bytes` hold, or std::runtime_error for anything but a whole,
// intact entry of `key` written for `fingerprint` (damaged, truncated,
// another key, another model). `where` names the copy in messages.
std::shared_ptr<DocKvEntry> DecodeEntry(const std::string& bytes, const DocKey& key,
                                        const std::string& fingerprint, const std::string& where);

// A client id and what it names, as JSON; the fingerprint says which model's
// tokens `info.ids` are.
std::string EncodeAlias(const std::string& alias, const DocAlias& info,
                        const std::string& fingerprint);
// The id and what it names, or std::runtime_error. A non-empty `fingerprint`
// must match the one recorded (ids written before it was recorded pass when
// it is empty).
DocAlias DecodeAlias(const std::string& bytes, const std::string& where,
                     const std::string& fingerprint, std::string* alias);

}  // namespace gritserve
