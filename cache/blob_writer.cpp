#include "cache/blob_writer.hpp"

#include <sys/stat.h>
#include <unistd.h>

namespace accel::cache {

StoreBlobWriter::StoreBlobWriter(const BlobStore& store, IndexBlob index_blob)
    : temp_(store.create_temp()), index_blob_(std::move(index_blob)) {}

StoreBlobWriter::~StoreBlobWriter() {
  temp_.fd.reset();
  if (!file_handed_over_) ::unlink(temp_.path.c_str());
}

void StoreBlobWriter::write(const void* data, size_t size) {
  if (finished_) throw CacheError("blob writer used after commit");
  write_all(temp_.fd.get(), data, size, temp_.path);
  sha_.update(data, size);
  bytes_ += size;
}

// The digest computed while writing, unless someone wrote to (or replaced) path() directly:
// then the file is read again.
HashedFile StoreBlobWriter::written_content() {
  struct stat ours {}, at_path {};
  bool untouched = ::fstat(temp_.fd.get(), &ours) == 0 && ::stat(temp_.path.c_str(), &at_path) == 0 &&
                   ours.st_ino == at_path.st_ino && ours.st_dev == at_path.st_dev &&
                   static_cast<uint64_t>(at_path.st_size) == bytes_;
  if (untouched) return HashedFile{sha_.digest(), bytes_};
  return hash_file(temp_.path);
}

std::string StoreBlobWriter::commit(const std::string& media_type, const std::string& expected_digest) {
  if (finished_) throw CacheError("blob writer committed twice");
  finished_ = true;
  HashedFile content = written_content();
  if (!expected_digest.empty() && expected_digest != content.digest)
    throw CacheError("blob digest mismatch: expected " + expected_digest.substr(0, 80) + ", wrote " +
                     content.digest);
  temp_.fd.reset();
  index_blob_(temp_.path, content.digest, content.size, media_type);
  file_handed_over_ = true;
  return content.digest;
}

}  // namespace accel::cache
