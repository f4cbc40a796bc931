// Pull-style byte streams that the conversion pipeline is built from: a source is read in
// pieces, never held whole. Decompressors, tar entry readers and files all implement it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace accel::convert {

// Every conversion failure: malformed input, limits exceeded, I/O errors. The message is meant
// for the user ("truncated gzip stream in layer sha256:...").
struct ConvertError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Reads up to `size` bytes into `out`; returns 0 only at the end of the stream.
  // Throws ConvertError on malformed or truncated input.
  virtual size_t read(void* out, size_t size) = 0;
};

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual void write(const void* data, size_t size) = 0;
};

}  // namespace accel::convert
