#include "cache/blob_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "cache/cache.hpp"

namespace accel::cache {

namespace {

constexpr std::string_view kSha256Prefix = "sha256:";

[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw CacheError(what + " " + path + ": " + std::strerror(errno));
}

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};
using DirHandle = std::unique_ptr<DIR, DirCloser>;

bool is_directory(const std::string& dir, const dirent& entry) {
  if (entry.d_type != DT_UNKNOWN) return entry.d_type == DT_DIR;
  struct stat st {};  // some file systems don't fill d_type
  return ::lstat((dir + "/" + entry.d_name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Calls `visit(name)` for everything in `dir` but directories.
template <class Visit>
void for_each_file(const std::string& dir, Visit&& visit) {
  DirHandle handle(::opendir(dir.c_str()));
  if (!handle) fail("cannot list", dir);
  while (dirent* entry = ::readdir(handle.get()))
    if (!is_directory(dir, *entry)) visit(std::string(entry->d_name));
}

}  // namespace

bool is_sha256_digest(std::string_view digest) {
  if (digest.size() != kSha256Prefix.size() + 64 || digest.substr(0, kSha256Prefix.size()) != kSha256Prefix)
    return false;
  for (char c : digest.substr(kSha256Prefix.size()))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// --- UniqueFd ---------------------------------------------------------------------------------

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = other.release();
  }
  return *this;
}

int UniqueFd::release() { return std::exchange(fd_, -1); }

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

HashedFile hash_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail("cannot open", path);
  Sha256 sha;
  HashedFile result;
  std::vector<char> buffer(1 << 16);
  while (true) {
    ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot read", path);
    if (n == 0) break;
    sha.update(buffer.data(), static_cast<size_t>(n));
    result.size += static_cast<uint64_t>(n);
  }
  result.digest = sha.digest();
  return result;
}

// --- file helpers -----------------------------------------------------------------------------

void make_dirs(const std::string& path) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    std::string partial = path.substr(0, slash);
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) fail("cannot create", partial);
    if (slash == std::string::npos) return;
  }
}

void sync_path(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail("cannot open", path);
  if (::fsync(fd.get()) != 0) fail("cannot sync", path);
}

void write_all(int fd, const void* data, size_t size, const std::string& path) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot write", path);
    p += n;
    size -= static_cast<size_t>(n);
  }
}

// --- BlobStore --------------------------------------------------------------------------------

BlobStore::BlobStore(std::string dir) : blobs_dir_(dir + "/blobs/sha256"), temp_dir_(dir + "/blobs/tmp") {
  make_dirs(blobs_dir_);
  make_dirs(temp_dir_);
}

std::string BlobStore::path_of(const std::string& digest) const {
  if (!is_sha256_digest(digest)) throw CacheError("invalid digest " + digest.substr(0, 80));
  return blobs_dir_ + "/" + digest.substr(kSha256Prefix.size());
}

TempFile BlobStore::create_temp() const {
  TempFile temp;
  temp.path = temp_dir_ + "/blob-XXXXXX";
  temp.fd = UniqueFd(::mkostemp(temp.path.data(), O_CLOEXEC));
  if (temp.fd.get() < 0) fail("cannot create a file in", temp_dir_);
  ::fchmod(temp.fd.get(), 0644);  // mkstemp makes 0600; blobs are served by whoever runs the proxy
  return temp;
}

void BlobStore::install(const std::string& path, const std::string& digest) const {
  std::string destination = path_of(digest);
  sync_path(path);
  if (::rename(path.c_str(), destination.c_str()) != 0) fail("cannot rename into", destination);
  sync_path(blobs_dir_);  // the rename must be durable before an index entry names the blob
}

void BlobStore::remove(const std::string& digest) const {
  std::string path = path_of(digest);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) fail("cannot remove", path);
}

void BlobStore::empty_temp() const {
  for_each_file(temp_dir_, [&](const std::string& name) {
    std::string path = temp_dir_ + "/" + name;
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) fail("cannot remove", path);
  });
}

StoreListing BlobStore::list() const {
  StoreListing listing;
  for_each_file(blobs_dir_, [&](const std::string& name) {
    std::string path = blobs_dir_ + "/" + name;
    std::string digest = std::string(kSha256Prefix) + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return;  // removed while listing
      fail("cannot stat", path);
    }
    if (is_sha256_digest(digest) && S_ISREG(st.st_mode))
      listing.blobs[digest] = static_cast<uint64_t>(st.st_size);
    else
      listing.strays.push_back(path);
  });
  return listing;
}

}  // namespace accel::cache
