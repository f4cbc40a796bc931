#include "variants/originals.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "cache/blob_store.hpp"
#include "convert/sha256.hpp"

namespace accel {

namespace {

// Commits waiting for the committer thread. Past this a new body is not kept (it still reaches
// its client): the queue holds finished files on disk, and a burst of cold pulls must not pile
// up more of them than the thread can check soon.
constexpr size_t kMaxQueued = 64;
// Pipe threads (OriginalCapture::sink_pipe) at once; past this the network thread writes the file
// itself.
constexpr int kMaxWriters = 16;
// What a pipe's thread moves to the file per call. The kernel holds the pipe's lock for the whole
// call, while the network thread waits to put more into the pipe: small pieces keep that short.
constexpr size_t kWriterChunk = 128 * 1024;

// What a client must be able to read upstream to be shown a cached object of a repository (the
// "proof" of cache.hpp's membership rows): for an original, the object itself.
std::string own_proof(const OriginalObject& object) { return object.kind + ":" + object.digest; }

void remove_file(const std::string& path) {
  if (!path.empty()) ::unlink(path.c_str());
}

}  // namespace

// --- OriginalCapture --------------------------------------------------------------------------

// What the network side and the pipe's thread share; `mutex` guards the fields after it.
struct OriginalCapture::Shared {
  OriginalObject object;
  std::string path;
  int fd = -1;
  std::mutex mutex;
  uint64_t written = 0;
  bool failed = false;
  bool network_done = false;
  bool complete = false;  // the network side read the whole body
  bool writer_running = false;
};

OriginalCapture::OriginalCapture(Originals& owner, std::shared_ptr<Shared> shared)
    : owner_(owner), shared_(std::move(shared)) {}

OriginalCapture::~OriginalCapture() {
  // The transfer broke off (client gone, upstream failed or stalled): a partial file is never
  // committed.
  if (!ended_) end(false);
}

int OriginalCapture::fd() const { return shared_->fd; }

void OriginalCapture::wrote(uint64_t bytes) {
  std::lock_guard lock(shared_->mutex);
  shared_->written += bytes;
}

void OriginalCapture::fail() {
  std::lock_guard lock(shared_->mutex);
  shared_->failed = true;
}

void OriginalCapture::write(const void* data, size_t size) {
  auto* p = static_cast<const char*>(data);
  uint64_t done = 0;
  bool failed = false;
  while (size > 0) {
    ssize_t n = ::write(shared_->fd, p, size);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      done += static_cast<uint64_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      failed = true;
      break;
    }
  }
  std::lock_guard lock(shared_->mutex);
  shared_->written += done;
  shared_->failed = shared_->failed || failed;
}

int OriginalCapture::sink_pipe() {
  if (pipe_write_ >= 0 || ended_ || !owner_.start_writer()) return -1;
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    owner_.writer_done();
    return -1;
  }
  ::fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
  ::fcntl(fds[0], F_SETFL, 0);  // the thread's end blocks; the network side's stays non-blocking
  pipe_write_ = fds[1];
  {
    std::lock_guard lock(shared_->mutex);
    shared_->writer_running = true;
  }
  std::thread([owner = &owner_, shared = shared_, read_end = fds[0]] {
    // Appends at explicit offsets after what the network thread wrote before the pipe started.
    loff_t offset = 0;
    {
      std::lock_guard lock(shared->mutex);
      offset = static_cast<loff_t>(shared->written);
    }
    uint64_t moved = 0;
    bool failed = false;
    while (true) {
      ssize_t n = ::splice(read_end, nullptr, shared->fd, &offset, kWriterChunk, SPLICE_F_MOVE);
      if (n > 0) {
        moved += static_cast<uint64_t>(n);
      } else if (n == 0) {
        break;  // the network side closed its end
      } else if (errno != EINTR) {
        failed = true;  // its next write into the pipe fails (EPIPE): it gives the copy up
        break;
      }
    }
    ::close(read_end);
    bool last = false;
    {
      std::lock_guard lock(shared->mutex);
      shared->written += moved;
      shared->failed = shared->failed || failed;
      shared->writer_running = false;
      last = shared->network_done;
    }
    if (last) owner->settle(*shared);
    owner->writer_done();
  }).detach();
  return pipe_write_;
}

void OriginalCapture::finish() { end(true); }

void OriginalCapture::end(bool complete) {
  if (ended_) return;
  ended_ = true;
  if (pipe_write_ >= 0) ::close(pipe_write_);  // the pipe's thread drains the rest, then sees its end
  bool last = false;
  {
    std::lock_guard lock(shared_->mutex);
    shared_->network_done = true;
    shared_->complete = complete;
    last = !shared_->writer_running;
  }
  if (last) owner_.settle(*shared_);
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
    // Pipe threads end once the network side closed its pipes, which it has by now (the server
    // is gone); what they settle may still be queued, and is then dropped below.
    std::unique_lock lock(mutex_);
    writers_gone_.wait(lock, [&] { return writers_ == 0; });
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

bool Originals::start_writer() {
  std::lock_guard lock(mutex_);
  if (writers_ >= kMaxWriters || stop_) return false;
  ++writers_;
  return true;
}

void Originals::writer_done() {
  std::lock_guard lock(mutex_);
  if (--writers_ == 0) {
    writers_gone_.notify_all();
    idle_.notify_all();
  }
}

void Originals::settle(Shared& shared) {
  ::close(shared.fd);
  shared.fd = -1;
  const OriginalObject& o = shared.object;
  if (!shared.complete || shared.failed || shared.written != o.size) {
    remove_file(shared.path);
    release(o.digest);
    count(o.kind, !shared.complete ? "aborted" : shared.failed ? "failed" : "incomplete");
    return;
  }
  enqueue(Job{o, shared.path, std::nullopt});
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
  // The whole length is allocated at once (the size unchanged): a disk without room for it
  // refuses now rather than half-way, and ext4 places the file once instead of block by block
  // at writeback. Cold 1 GiB GETs, alternating (2026-12-08): 1.10-1.16 GB/s with it, 1.02-1.16
  // without (5 each), and without it some samples dipped to 0.56. A file system without
  // fallocate just goes without.
  if (object.size > 0 && ::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(object.size)) != 0 &&
      errno == ENOSPC) {
    ::close(fd);
    remove_file(path);
    release(object.digest);
    count(object.kind, "failed");
    return nullptr;
  }
  auto shared = std::make_shared<Shared>();
  shared->object = object;
  shared->path = std::move(path);
  shared->fd = fd;
  return std::unique_ptr<OriginalCapture>(new OriginalCapture(*this, std::move(shared)));
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
  const bool claimed = !job.path.empty() || job.bytes;  // a membership-only job claims nothing
  {
    std::lock_guard lock(mutex_);
    // A membership row can wait for the next request when the queue is long; a body cannot.
    if (!stop_ && (claimed || queue_.size() < kMaxQueued)) {
      queue_.push_back(std::move(job));
      wake_.notify_one();
      return;
    }
    if (claimed) in_flight_.erase(job.object.digest);
  }
  remove_file(job.path);
}

void Originals::drain() {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return (queue_.empty() && !busy_ && writers_ == 0) || stop_; });
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
