// The byte streams a conversion is assembled from: files, decompressors (gzip, zstd, none, by
// magic bytes), and pass-through wrappers that hash or count what flows through them.
#pragma once

#include <cstdio>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "convert/byte_source.hpp"
#include "convert/sha256.hpp"

namespace accel::convert {

enum class Compression { none, gzip, zstd };

const char* compression_name(Compression c);

class FileSource : public ByteSource {
 public:
  // Reads from `offset` on (past the end: nothing).
  explicit FileSource(const std::string& path, uint64_t offset = 0);
  ~FileSource() override;
  size_t read(void* out, size_t size) override;

 private:
  int fd_ = -1;
  std::string path_;
};

// Writes to a temporary file next to `path`; commit() fsyncs and renames it into place, and a
// FileSink destroyed without commit() removes the temporary file: no partial output ever
// appears under the final name. A scratch file (read back and deleted by the same process)
// skips the syncing: it has no reason to outlive a crash.
class FileSink : public ByteSink {
 public:
  enum class Durability { synced, scratch };
  explicit FileSink(const std::string& path, Durability durability = Durability::synced);
  ~FileSink() override;
  void write(const void* data, size_t size) override;
  void commit();

 private:
  static constexpr uint64_t kWritebackBytes = 4 << 20;
  void flush();
  void write_out(const char* data, size_t size);
  int fd_ = -1;
  std::string path_, temp_path_;
  std::vector<char> buffer_;
  uint64_t written_ = 0, writeback_from_ = 0;
  Durability durability_;
  bool committed_ = false;
};

// Hashes (and counts) everything read through it.
class HashingSource : public ByteSource {
 public:
  explicit HashingSource(ByteSource& inner) : inner_(inner) {}
  size_t read(void* out, size_t size) override;
  std::string digest() { return hash_.digest(); }
  uint64_t bytes() const { return bytes_; }

 private:
  ByteSource& inner_;
  Sha256 hash_;
  uint64_t bytes_ = 0;
};

// Hashes (and counts) everything written through it; `inner` may be null (hash only).
class HashingSink : public ByteSink {
 public:
  explicit HashingSink(ByteSink* inner) : inner_(inner) {}
  void write(const void* data, size_t size) override;
  std::string digest() { return hash_.digest(); }
  uint64_t bytes() const { return bytes_; }

 private:
  ByteSink* inner_;
  Sha256 hash_;
  uint64_t bytes_ = 0;
};

// Reads bytes the caller keeps alive, at most `max_read` of them per call (small values
// exercise partial reads in tests).
class MemorySource : public ByteSource {
 public:
  explicit MemorySource(std::string_view bytes, size_t max_read = SIZE_MAX) : bytes_(bytes), max_read_(max_read) {}
  size_t read(void* out, size_t size) override;
  size_t position() const { return position_; }

 private:
  std::string_view bytes_;
  size_t max_read_;
  size_t position_ = 0;
};

// Collects everything written to it (small objects, tests).
class StringSink : public ByteSink {
 public:
  void write(const void* data, size_t size) override { this->data.append(static_cast<const char*>(data), size); }
  std::string data;
};

// Wraps `compressed` in the decompressor its first bytes call for (gzip 1f 8b, zstd 28 b5 2f fd,
// anything else is taken as an uncompressed tar). Multi-member gzip and multi-frame zstd are
// read to the end; trailing garbage, truncation and corruption throw ConvertError.
std::unique_ptr<ByteSource> open_decompressed(ByteSource& compressed, Compression* detected = nullptr);

// Reads a source to its end, discarding the bytes (to finish hashing it).
void drain(ByteSource& source);

}  // namespace accel::convert
