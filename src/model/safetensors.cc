#include "gritserve/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "gritserve/common/error.h"

namespace gritserve {
namespace {

using nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";

// The format fixes little-endian; so does every platform we build for, which lets the
// loader use the mapped bytes as they are.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

bool ParseDType(const std::string& name, DType* out) {
  if (name == "F32") {
    *out = DType::kF32;
  } else if (name == "F16") {
    *out = DType::kF16;
  } else if (name == "BF16") {
    *out = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Bytes for a tensor, or false on overflow (a hostile header could claim 2^70 elements).
bool TensorBytes(const std::vector<int64_t>& shape, DType dtype, uint64_t* out) {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

bool NonNegativeInt(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::unique_ptr<SafeTensorsFile> SafeTensorsFile::Open(const std::string& path) {
  auto fail = [&](const std::string& problem) { return LoadError(path + ": " + problem); };

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail("cannot open: " + ErrnoText());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string err = ErrnoText();
    ::close(fd);
    throw fail("cannot stat: " + err);
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw fail("truncated: " + std::to_string(file_size) +
               " bytes, shorter than the 8-byte header length");
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string mmap_err = ErrnoText();
  // The mapping keeps the file alive; the descriptor is no longer needed.
  ::close(fd);
  if (mapping == MAP_FAILED) throw fail("cannot mmap: " + mmap_err);
  // Loading reads every byte once, front to back: ask for read-ahead rather than taking a
  // page fault per 4 KB of a cold multi-GB checkpoint. Only a hint; failure is harmless.
  ::madvise(mapping, file_size, MADV_SEQUENTIAL);
  ::madvise(mapping, file_size, MADV_WILLNEED);

  std::unique_ptr<SafeTensorsFile> file(new SafeTensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;

  const auto* bytes = static_cast<const uint8_t*>(mapping);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  // Checked before anything is allocated: the length comes from an untrusted file.
  if (header_len > file_size - 8) {
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(file_size) + " bytes)");
  }
  if (header_len > kMaxSafeTensorsHeaderBytes) {
    throw fail("header length " + std::to_string(header_len) + " exceeds the " +
               std::to_string(kMaxSafeTensorsHeaderBytes) + "-byte limit");
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::parse_error& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail("header is not a JSON object");

  const uint8_t* data_begin = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      if (entry.is_null()) continue;
      if (!entry.is_object()) throw fail("'__metadata__' is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) throw fail("'__metadata__' value '" + key + "' is not a string");
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& problem) {
      return fail("tensor '" + name + "': " + problem);
    };
    if (!entry.is_object()) throw bad("header entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) {
      throw bad("missing or non-string 'dtype'");
    }
    if (!entry.contains("shape") || !entry["shape"].is_array()) {
      throw bad("missing or non-list 'shape'");
    }
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      throw bad("missing 'data_offsets' or not a [begin, end] pair");
    }

    TensorView view;
    view.name = name;
    const std::string dtype_name = entry["dtype"].get<std::string>();
    if (!ParseDType(dtype_name, &view.dtype)) {
      throw fail("unsupported dtype '" + dtype_name + "' for tensor '" + name +
                 "' (supported: F32, F16, BF16)");
    }
    for (const json& d : entry["shape"]) {
      uint64_t dim = 0;
      if (!NonNegativeInt(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
        throw bad("shape " + entry["shape"].dump() + " has a non-integer or negative dimension");
      }
      view.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t begin = 0, end = 0;
    if (!NonNegativeInt(entry["data_offsets"][0], &begin) ||
        !NonNegativeInt(entry["data_offsets"][1], &end)) {
      throw bad("data_offsets " + entry["data_offsets"].dump() + " are not non-negative integers");
    }
    if (begin > end) {
      throw bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                "] have begin > end");
    }
    if (end > data_size) {
      throw bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                "] out of range: the data buffer has " + std::to_string(data_size) + " bytes");
    }
    uint64_t expected = 0;
    if (!TensorBytes(view.shape, view.dtype, &expected) || expected != end - begin) {
      throw bad("data_offsets span " + std::to_string(end - begin) + " bytes but shape " +
                ShapeString(view.shape) + " of " + dtype_name + " needs " +
                (expected ? std::to_string(expected) : std::string("an overflowing count of")) +
                " bytes");
    }
    view.data = data_begin + begin;
    view.nbytes = static_cast<size_t>(end - begin);
    file->tensors_.emplace(name, std::move(view));
  }
  return file;
}

SafeTensorsFile::~SafeTensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

SafeTensorsWriter::SafeTensorsWriter(const std::string& path, std::vector<TensorLayout> layout,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), layout_(std::move(layout)) {
  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const TensorLayout& t : layout_) {
    if (t.name == kMetadataKey || header.contains(t.name)) {
      throw LoadError(path + ": duplicate or reserved tensor name '" + t.name + "'");
    }
    uint64_t nbytes = 0;
    if (!TensorBytes(t.shape, t.dtype, &nbytes)) {
      throw LoadError(path + ": tensor '" + t.name + "' has an invalid shape " +
                      ShapeString(t.shape));
    }
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  data_bytes_ = offset;

  std::string text = header.dump();
  // Padding keeps the data buffer 8-byte aligned in the mapping, so readers can use the
  // tensors in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  temp_path_ = path + ".tmp." + std::to_string(::getpid());
  file_ = std::fopen(temp_path_.c_str(), "wb");
  if (file_ == nullptr) throw LoadError("cannot create " + temp_path_ + ": " + ErrnoText());
  if (std::fwrite(&header_len, 8, 1, file_) != 1 ||
      std::fwrite(text.data(), 1, text.size(), file_) != text.size()) {
    throw LoadError("cannot write " + temp_path_ + ": " + ErrnoText());
  }
}

SafeTensorsWriter::~SafeTensorsWriter() {
  if (file_ != nullptr) std::fclose(file_);
  if (!finished_ && !temp_path_.empty()) {
    std::error_code ignored;
    std::filesystem::remove(temp_path_, ignored);
  }
}

void SafeTensorsWriter::Append(const void* data, size_t nbytes) {
  if (next_ >= layout_.size()) {
    throw LoadError(path_ + ": more tensors appended than the layout lists");
  }
  const TensorLayout& t = layout_[next_];
  uint64_t expected = 0;
  TensorBytes(t.shape, t.dtype, &expected);
  if (nbytes != expected) {
    throw LoadError(path_ + ": tensor '" + t.name + "' got " + std::to_string(nbytes) +
                    " bytes, its shape " + ShapeString(t.shape) + " needs " +
                    std::to_string(expected));
  }
  if (nbytes > 0 && std::fwrite(data, 1, nbytes, file_) != nbytes) {
    throw LoadError("cannot write " + temp_path_ + ": " + ErrnoText());
  }
  ++next_;
}

void SafeTensorsWriter::Finish() {
  if (next_ != layout_.size()) {
    throw LoadError(path_ + ": only " + std::to_string(next_) + " of " +
                    std::to_string(layout_.size()) + " tensors were written");
  }
  const int rc = std::fclose(file_);
  file_ = nullptr;
  if (rc != 0) throw LoadError("cannot write " + temp_path_ + ": " + ErrnoText());
  std::error_code ec;
  std::filesystem::rename(temp_path_, path_, ec);
  if (ec) throw LoadError("cannot rename " + temp_path_ + " to " + path_ + ": " + ec.message());
  finished_ = true;
}

void WriteSafeTensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<TensorLayout> layout;
  layout.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) layout.push_back({t.name, t.dtype, t.shape});
  SafeTensorsWriter writer(path, std::move(layout), metadata);
  for (const TensorToWrite& t : tensors) writer.Append(t.bytes.data(), t.bytes.size());
  writer.Finish();
}

}  // namespace gritserve
