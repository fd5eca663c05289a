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
#include "gritserve/common/json_fields.h"

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

Error FileError(const std::string& path, const std::string& problem) {
  return LoadError(path + ": " + problem);
}

// The whole file, mapped read-only; *size is its length.
void* MapWholeFile(const std::string& path, uint64_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw FileError(path, "cannot open: " + ErrnoText());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string err = ErrnoText();
    ::close(fd);
    throw FileError(path, "cannot stat: " + err);
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw FileError(path, "truncated: " + std::to_string(file_size) +
                              " bytes, shorter than the 8-byte header length");
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string mmap_err = ErrnoText();
  // The mapping keeps the file alive; the descriptor is no longer needed.
  ::close(fd);
  if (mapping == MAP_FAILED) throw FileError(path, "cannot mmap: " + mmap_err);
  // Loading reads every byte once, front to back: ask for read-ahead rather than taking a
  // page fault per 4 KB of a cold multi-GB checkpoint. Only a hint; failure is harmless.
  ::madvise(mapping, file_size, MADV_SEQUENTIAL);
  ::madvise(mapping, file_size, MADV_WILLNEED);
  *size = file_size;
  return mapping;
}

// The JSON header of a mapped file of `file_size` bytes; *header_len is its length.
json ParseHeader(const std::string& path, const uint8_t* bytes, uint64_t file_size,
                 uint64_t* header_len) {
  std::memcpy(header_len, bytes, 8);
  // Checked before anything is allocated: the length comes from an untrusted file.
  if (*header_len > file_size - 8) {
    throw FileError(path, "header length " + std::to_string(*header_len) +
                              " runs past the end of the file (" + std::to_string(file_size) +
                              " bytes)");
  }
  if (*header_len > kMaxSafeTensorsHeaderBytes) {
    throw FileError(path, "header length " + std::to_string(*header_len) + " exceeds the " +
                              std::to_string(kMaxSafeTensorsHeaderBytes) + "-byte limit");
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + *header_len);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number overflow
    throw FileError(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw FileError(path, "header is not a JSON object");
  return header;
}

std::map<std::string, std::string> ParseMetadata(const std::string& path, const json& entry) {
  std::map<std::string, std::string> metadata;
  if (entry.is_null()) return metadata;
  if (!entry.is_object()) throw FileError(path, "'__metadata__' is not an object");
  for (const auto& [key, value] : entry.items()) {
    if (!value.is_string()) {
      throw FileError(path, "'__metadata__' value '" + key + "' is not a string");
    }
    metadata[key] = value.get<std::string>();
  }
  return metadata;
}

Error TensorError(const std::string& path, const std::string& name, const std::string& problem) {
  return FileError(path, "tensor '" + name + "': " + problem);
}

// The three fields every tensor entry needs, present and of the right JSON type.
struct EntryFields {
  const json* dtype;
  const json* shape;
  const json* data_offsets;
};

EntryFields RequireEntryFields(const std::string& path, const std::string& name,
                               const json& entry) {
  if (!entry.is_object()) throw TensorError(path, name, "header entry is not an object");
  const JsonFields fields = JsonFields::File(entry, path);
  const EntryFields f{fields.Find("dtype"), fields.Find("shape"), fields.Find("data_offsets")};
  if (f.dtype == nullptr || !f.dtype->is_string()) {
    throw TensorError(path, name, "missing or non-string 'dtype'");
  }
  if (f.shape == nullptr || !f.shape->is_array()) {
    throw TensorError(path, name, "missing or non-list 'shape'");
  }
  if (f.data_offsets == nullptr || !f.data_offsets->is_array() || f.data_offsets->size() != 2) {
    throw TensorError(path, name, "missing 'data_offsets' or not a [begin, end] pair");
  }
  return f;
}

std::vector<int64_t> ParseShape(const std::string& path, const std::string& name,
                                const json& shape) {
  std::vector<int64_t> dims;
  for (const json& d : shape) {
    uint64_t dim = 0;
    if (!NonNegativeInt(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
      throw TensorError(path, name,
                        "shape " + shape.dump() + " has a non-integer or negative dimension");
    }
    dims.push_back(static_cast<int64_t>(dim));
  }
  return dims;
}

// Where a tensor's bytes lie in the data buffer.
struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;
};

ByteRange ParseByteRange(const std::string& path, const std::string& name, const json& data_offsets,
                         uint64_t data_size) {
  ByteRange r;
  if (!NonNegativeInt(data_offsets[0], &r.begin) || !NonNegativeInt(data_offsets[1], &r.end)) {
    throw TensorError(path, name,
                      "data_offsets " + data_offsets.dump() + " are not non-negative integers");
  }
  const std::string range = "[" + std::to_string(r.begin) + ", " + std::to_string(r.end) + "]";
  if (r.begin > r.end) throw TensorError(path, name, "data_offsets " + range + " have begin > end");
  if (r.end > data_size) {
    throw TensorError(path, name,
                      "data_offsets " + range + " out of range: the data buffer has " +
                          std::to_string(data_size) + " bytes");
  }
  return r;
}

// One tensor's header entry, checked against the data buffer it indexes.
TensorView ParseTensorEntry(const std::string& path, const std::string& name, const json& entry,
                            const uint8_t* data_begin, uint64_t data_size) {
  const EntryFields f = RequireEntryFields(path, name, entry);
  TensorView view;
  view.name = name;
  const std::string dtype_name = f.dtype->get<std::string>();
  if (!ParseDType(dtype_name, &view.dtype)) {
    throw FileError(path, "unsupported dtype '" + dtype_name + "' for tensor '" + name +
                              "' (supported: F32, F16, BF16)");
  }
  view.shape = ParseShape(path, name, *f.shape);
  const ByteRange r = ParseByteRange(path, name, *f.data_offsets, data_size);
  uint64_t expected = 0;
  if (!TensorBytes(view.shape, view.dtype, &expected) || expected != r.end - r.begin) {
    throw TensorError(
        path, name,
        "data_offsets span " + std::to_string(r.end - r.begin) + " bytes but shape " +
            ShapeString(view.shape) + " of " + dtype_name + " needs " +
            (expected ? std::to_string(expected) : std::string("an overflowing count of")) +
            " bytes");
  }
  view.data = data_begin + r.begin;
  view.nbytes = static_cast<size_t>(r.end - r.begin);
  return view;
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

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
  uint64_t file_size = 0;
  void* mapping = MapWholeFile(path, &file_size);
  // Owned from here on, so that a bad header unmaps it.
  std::unique_ptr<SafeTensorsFile> file(new SafeTensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;

  const auto* bytes = static_cast<const uint8_t*>(mapping);
  uint64_t header_len = 0;
  const json header = ParseHeader(path, bytes, file_size, &header_len);
  const uint8_t* data_begin = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      file->metadata_ = ParseMetadata(path, entry);
    } else {
      file->tensors_.emplace(name, ParseTensorEntry(path, name, entry, data_begin, data_size));
    }
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
