// The file side of the cache: blobs/sha256/<hex> and blobs/tmp/. Durable moves, listing,
// removal, hashing. It does not know the index; cache.cpp orders file and index changes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "convert/sha256.hpp"

namespace accel::cache {

// "sha256:" + 64 lowercase hex digits.
bool is_sha256_digest(std::string_view digest);

// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  int release();
  void reset();

 private:
  int fd_ = -1;
};

// The one SHA-256 of the project (OpenSSL; convert/sha256.hpp has no other dependency).
using convert::Sha256;

struct HashedFile {
  std::string digest;
  uint64_t size = 0;
};
HashedFile hash_file(const std::string& path);

struct TempFile {
  UniqueFd fd;
  std::string path;
};

// What the blob directory holds.
struct StoreListing {
  std::map<std::string, uint64_t> blobs;  // digest -> file size
  std::vector<std::string> strays;         // paths of files whose name is not a digest
};

class BlobStore {
 public:
  explicit BlobStore(std::string dir);  // creates <dir>/blobs/sha256 and <dir>/blobs/tmp

  std::string path_of(const std::string& digest) const;
  // A new, empty, exclusively created file in blobs/tmp.
  TempFile create_temp() const;
  // Makes `path` durable, renames it to the blob's place and makes the rename durable.
  void install(const std::string& path, const std::string& digest) const;
  // Unlinks the blob file; a missing file is not an error.
  void remove(const std::string& digest) const;
  // Unlinks every file in blobs/tmp (partial writes of a previous run).
  void empty_temp() const;
  const std::string& temp_dir() const { return temp_dir_; }
  StoreListing list() const;

 private:
  std::string blobs_dir_;  // <dir>/blobs/sha256
  std::string temp_dir_;   // <dir>/blobs/tmp
};

// Creates the directory and its parents.
void make_dirs(const std::string& path);
// fsync(2) of a file or directory by path.
void sync_path(const std::string& path);
// Writes everything or throws CacheError.
void write_all(int fd, const void* data, size_t size, const std::string& path);

}  // namespace accel::cache
