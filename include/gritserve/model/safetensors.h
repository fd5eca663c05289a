// Reader and writer for the safetensors format (Hugging Face): an 8-byte little-endian
// header length N, N bytes of JSON header {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {str: str}}, then the data buffer that the offsets index.
// Torch-free so that tools and tests can use it without LibTorch's headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gritserve {

// Only the floating-point types checkpoints are published in; others are refused on load.
enum class DType { kF32, kF16, kBF16 };

// The safetensors spelling: "F32", "F16", "BF16".
const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

// A tensor inside an open SafeTensorsFile. `data` points into the file mapping.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;

  int64_t numel() const;
};

// A safetensors file mapped read-only. Open validates the whole header, so every view it
// exposes lies inside the file. Views stay valid while the object lives.
class SafeTensorsFile {
 public:
  // Throws Error(kLoad) naming the file and the problem (and the tensor when there is one).
  static std::unique_ptr<SafeTensorsFile> Open(const std::string& path);
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // The "__metadata__" entry; empty when absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafeTensorsFile() = default;

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Largest JSON header accepted; real checkpoints have headers of a few hundred KB.
constexpr uint64_t kMaxSafeTensorsHeaderBytes = 100ull << 20;

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian data, prod(shape) * DTypeSize(dtype) bytes
};

// Writes a whole file at once. The header is padded to a multiple of 8 bytes with spaces,
// as HF does, and the file is written under a temporary name and then renamed, so a reader
// never sees a partial file. Throws Error(kLoad) on I/O failure or inconsistent sizes.
void WriteSafeTensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The layout of one tensor in a file written by SafeTensorsWriter.
struct TensorLayout {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// Streaming writer for files too big to hold in memory (a 0.5B model in f32 is 2 GB):
// the header is written from the layout up front, then each tensor's bytes in layout order.
class SafeTensorsWriter {
 public:
  SafeTensorsWriter(const std::string& path, std::vector<TensorLayout> layout,
                    const std::map<std::string, std::string>& metadata = {});
  // Removes the temporary file unless Finish() succeeded.
  ~SafeTensorsWriter();
  SafeTensorsWriter(const SafeTensorsWriter&) = delete;
  SafeTensorsWriter& operator=(const SafeTensorsWriter&) = delete;

  // Appends the data of the next tensor of the layout; nbytes must match its size exactly.
  void Append(const void* data, size_t nbytes);
  // Checks every tensor was written, closes the file and renames it into place.
  void Finish();

  // Total bytes of tensor data (the data buffer, excluding the header).
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  std::string path_;
  std::string temp_path_;
  std::vector<TensorLayout> layout_;
  size_t next_ = 0;
  uint64_t data_bytes_ = 0;
  std::FILE* file_ = nullptr;
  bool finished_ = false;
};

// "[2, 3]": a shape as error messages write it.
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace gritserve
