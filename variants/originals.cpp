#include "variants/originals.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <spdlog/spdlog.h>

#include "cache/blob_store.hpp"
#include "convert/sha256.hpp"

namespace accel {

namespace {

// Commits waiting for the committer thread. Past this a new body is not kept (it still reaches
// its client): the queue holds finished files on disk, and a burst of cold pulls must not pile
// up more of them than the thread can check soon.
constexpr size_t kMaxQueued = 64;

// What a client must be able to read upstream to be shown a cached object of a repository (the
// "proof" of cache.hpp's membership rows): for an original, the object itself.
std::string own_proof(const OriginalObject& object) { return object.kind + ":" + object.digest; }

void remove_file(const std::string& path) {
  if (!path.empty()) ::unlink(path.c_str());
}

}  // namespace

// --- OriginalCapture --------------------------------------------------------------------------

OriginalCapture::OriginalCapture(Originals& owner, OriginalObject object, std::string path, int fd)
    : owner_(owner), object_(std::move(object)), path_(std::move(path)), fd_(fd) {}

OriginalCapture::~OriginalCapture() {
  if (finished_) return;
  // The transfer broke off (client gone, upstream failed or stalled): a partial file is never
  // committed.
  ::close(fd_);
  remove_file(path_);
  owner_.release(object_.digest);
  owner_.count(object_.kind, "aborted");
}

void OriginalCapture::write(const void* data, size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0 && !failed_) {
    ssize_t n = ::write(fd_, p, size);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      written_ += static_cast<uint64_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      failed_ = true;
    }
  }
}

void OriginalCapture::finish() {
  if (finished_) return;
  finished_ = true;
  ::close(fd_);
  fd_ = -1;
  if (failed_ || written_ != object_.size) {
    remove_file(path_);
    owner_.release(object_.digest);
    owner_.count(object_.kind, failed_ ? "failed" : "incomplete");
    return;
  }
  owner_.enqueue(Originals::Job{object_, std::move(path_), std::nullopt});
}

// --- Originals --------------------------------------------------------------------------------

Originals::Originals(cache::Cache& cache, Metrics& metrics, uint64_t max_bytes)
    : cache_(cache), metrics_(metrics), max_bytes_(max_bytes) {
  using T = Metrics::Type;
  metrics.describe("accel_proxy_originals_hits_total", T::counter,
                   "Requests for original blobs and manifests answered from the cache (cache_originals), by kind.");
  metrics.describe("accel_proxy_originals_misses_total", T::counter,
                   "GETs by digest of an upstream with cache_originals that went to the upstream, by kind.");
  metrics.describe("accel_proxy_originals_served_bytes_total", T::counter,
                   "Body bytes of originals served from the cache, by kind.");
  metrics.describe("accel_proxy_originals_stored_total", T::counter,
                   "Originals written to the cache, by kind and result (committed, skipped, aborted, incomplete, failed).");
  metrics.describe("accel_proxy_originals_stored_bytes_total", T::counter, "Bytes of originals committed to the cache, by kind.");
  metrics.describe("accel_proxy_originals_digest_mismatches_total", T::counter,
                   "Originals the upstream sent with bytes that do not match their digest (never committed), by kind.");
  thread_ = std::thread([this] { run(); });
}

Originals::~Originals() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Originals::count(const std::string& kind, const char* result) {
  metrics_.add("accel_proxy_originals_stored_total", {{"kind", kind}, {"result", result}});
}

bool Originals::claim(const std::string& digest) {
  std::lock_guard lock(mutex_);
  return queue_.size() < kMaxQueued && in_flight_.insert(digest).second;
}

void Originals::release(const std::string& digest) {
  std::lock_guard lock(mutex_);
  in_flight_.erase(digest);
}

std::unique_ptr<OriginalCapture> Originals::capture(const OriginalObject& object) {
  if (cache_.blob(object.digest)) {
    // Kept already (fetched through another repository, or converted to itself): the upstream's
    // answer says this repository holds it too. The index write waits for the committer thread.
    if (!cache_.member(object.scope, object.digest)) enqueue(Job{object, "", std::nullopt});
    cache_.touch(object.digest);
    return nullptr;
  }
  if (object.size > max_bytes_ || !claim(object.digest)) {
    count(object.kind, "skipped");
    return nullptr;
  }
  std::string path = cache_.temp_dir() + "/original-XXXXXX";
  int fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    spdlog::warn("original not kept: cannot create a file in {}: {}", cache_.temp_dir(), std::strerror(errno));
    release(object.digest);
    count(object.kind, "failed");
    return nullptr;
  }
  ::fchmod(fd, 0644);  // as the cache's own files: served by whoever runs the proxy
  return std::unique_ptr<OriginalCapture>(new OriginalCapture(*this, object, std::move(path), fd));
}

void Originals::store(const OriginalObject& object, std::string bytes) {
  if (cache_.blob(object.digest)) {
    if (!cache_.member(object.scope, object.digest)) enqueue(Job{object, "", std::nullopt});
    cache_.touch(object.digest);
    return;
  }
  if (bytes.size() > max_bytes_ || !claim(object.digest)) {
    count(object.kind, "skipped");
    return;
  }
  OriginalObject sized = object;
  sized.size = bytes.size();
  enqueue(Job{std::move(sized), "", std::move(bytes)});
}

void Originals::enqueue(Job job) {
  {
    std::lock_guard lock(mutex_);
    if (!stop_) {
      queue_.push_back(std::move(job));
      wake_.notify_one();
      return;
    }
    in_flight_.erase(job.object.digest);
  }
  remove_file(job.path);
}

void Originals::drain() {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return (queue_.empty() && !busy_) || stop_; });
}

void Originals::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) break;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    commit(job);
    lock.lock();
    busy_ = false;
    // A membership-only job never claimed its digest: it must not release a capture's claim.
    if (!job.path.empty() || job.bytes) in_flight_.erase(job.object.digest);
    if (queue_.empty()) idle_.notify_all();
  }
  // Stopping: what is still queued is dropped (a restart finds its digests uncached and keeps them
  // on the next pull); the files go now, and a crash would have them removed at the next open.
  for (auto& job : queue_) remove_file(job.path);
  queue_.clear();
  idle_.notify_all();
}

// Checks and commits one body; never throws. The order is the cache's: the file is made durable
// and renamed, then indexed, then the membership row names it (cache.hpp), so a crash at any point
// leaves no entry without its complete, verified file.
void Originals::commit(Job& job) {
  const OriginalObject& o = job.object;
  try {
    if (job.bytes) {
      const std::string got = convert::Sha256::of(*job.bytes);
      if (got != o.digest) {
        metrics_.add("accel_proxy_originals_digest_mismatches_total", {{"kind", o.kind}});
        spdlog::warn("original not kept: digest mismatch scope={} kind={} digest={} got={}", o.scope, o.kind, o.digest, got);
        return;
      }
      auto writer = cache_.begin_blob();
      writer->write(job.bytes->data(), job.bytes->size());
      writer->commit(o.media_type, o.digest);
    } else if (!job.path.empty()) {
      const cache::HashedFile content = cache::hash_file(job.path);
      if (content.digest != o.digest || content.size != o.size) {
        remove_file(job.path);
        metrics_.add("accel_proxy_originals_digest_mismatches_total", {{"kind", o.kind}});
        spdlog::warn("original not kept: digest mismatch scope={} kind={} digest={} got={} size={}", o.scope, o.kind,
                     o.digest, content.digest, content.size);
        return;
      }
      cache_.adopt_blob(job.path, o.digest, o.size, o.media_type);  // fsync, rename, index
    }
    cache_.put_member(o.scope, o.digest, own_proof(o));
    if (!job.path.empty() || job.bytes) {
      count(o.kind, "committed");
      metrics_.add("accel_proxy_originals_stored_bytes_total", {{"kind", o.kind}}, static_cast<double>(o.size));
      cache_.evict();
    }
  } catch (const std::exception& e) {
    remove_file(job.path);
    count(o.kind, "failed");
    spdlog::warn("original not kept: scope={} kind={} digest={} error=\"{}\"", o.scope, o.kind, o.digest, e.what());
  }
}

}  // namespace accel
