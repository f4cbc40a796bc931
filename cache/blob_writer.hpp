// The BlobWriter the cache hands out: bytes go to a file in blobs/tmp while being hashed;
// commit() checks the digest and passes the finished file to `index_blob`, which moves it into
// the store and indexes it (Cache::Impl::index_new_blob).
#pragma once

#include <functional>
#include <string>

#include "cache/blob_store.hpp"
#include "cache/cache.hpp"

namespace accel::cache {

class StoreBlobWriter : public BlobWriter {
 public:
  // Takes the file away from `path` (renames or removes it) or throws.
  using IndexBlob = std::function<void(const std::string& path, const std::string& digest, uint64_t size,
                                       const std::string& media_type)>;

  StoreBlobWriter(const BlobStore& store, IndexBlob index_blob);
  ~StoreBlobWriter() override;

  void write(const void* data, size_t size) override;
  std::string path() const override { return temp_.path; }
  std::string commit(const std::string& media_type, const std::string& expected_digest = "") override;

 private:
  HashedFile written_content();

  TempFile temp_;
  IndexBlob index_blob_;
  Sha256 sha_;
  uint64_t bytes_ = 0;
  bool finished_ = false;       // commit() was called: no more writes
  bool file_handed_over_ = false;  // index_blob took the file: nothing to clean up
};

}  // namespace accel::cache
