// Original blobs and manifests kept locally (per upstream `cache_originals`; docs/DECISIONS.md,
// "Original content kept locally"). What a client fetches by digest through the proxy is written
// to a file in the cache's temporary directory while it streams to that client; once the whole
// body is in, a thread of its own checks its length and digest and only then moves it into the
// store and indexes it as a member of the repository it was fetched from. Hashing and fsync never
// run on a network thread, and a body that does not match its digest is never committed.
//
// Serving originals, and asking the upstream whether a client may read the repository first, is
// variants.cpp's: the same path as converted objects. Nothing here knows HTTP.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "cache/cache.hpp"
#include "proxy/metrics.hpp"

namespace accel {

class Originals;

// What a capture is of: the repository scope ("<upstream>/<repository>") it was fetched in, "blob"
// or "manifest", its digest, the media type to answer with later, and the length announced.
struct OriginalObject {
  std::string scope;
  std::string kind;
  std::string digest;
  std::string media_type;
  uint64_t size = 0;
};

// One body on its way into the cache. The network thread appends to it (write(), or the file
// descriptor directly, then wrote()) or feeds sink_pipe(), which a thread of the capture's own
// drains into the file; it calls finish() once the whole body came from the upstream. Destroyed
// without finish() (the client or the upstream went away): nothing is committed and the file goes.
// Whichever of the network side and the pipe's thread is done last settles the capture: queue
// the commit, or remove the file.
class OriginalCapture {
 public:
  ~OriginalCapture();
  OriginalCapture(const OriginalCapture&) = delete;
  OriginalCapture& operator=(const OriginalCapture&) = delete;

  int fd() const;
  void wrote(uint64_t bytes);
  // Appends `size` bytes. A failing write (disk full) marks the capture failed; it never throws:
  // the client's transfer goes on. Not after sink_pipe().
  void write(const void* data, size_t size);
  // The write end of a non-blocking pipe whose bytes a thread of this capture appends to the file:
  // the copy into the page cache then runs beside the transfer instead of in it. -1 when no such
  // thread can be had now (the network thread then writes the file itself). Called once.
  int sink_pipe();
  void fail();
  // The whole body was read.
  void finish();

 private:
  friend class Originals;
  struct Shared;
  OriginalCapture(Originals& owner, std::shared_ptr<Shared> shared);
  void end(bool complete);

  Originals& owner_;
  std::shared_ptr<Shared> shared_;
  int pipe_write_ = -1;
  bool ended_ = false;
};

class Originals {
 public:
  // Bodies larger than `max_bytes` (the cache's size) are not kept: they would evict everything
  // else and then themselves.
  Originals(cache::Cache& cache, Metrics& metrics, uint64_t max_bytes);
  ~Originals();  // the commit in hand finishes; queued ones are dropped (their files removed)
  Originals(const Originals&) = delete;
  Originals& operator=(const Originals&) = delete;

  // Starts keeping `object`, or returns null when it is not to be kept now: the cache holds it
  // already (then the scope is recorded as holding it, as the upstream just said), it is being
  // kept by another request, it is too large, the commit queue is full, or the temporary file
  // cannot be made.
  std::unique_ptr<OriginalCapture> capture(const OriginalObject& object);
  // A body the caller read whole (a manifest): checked and committed on the committer thread.
  void store(const OriginalObject& object, std::string bytes);
  // Waits until nothing is queued, being committed or being written by a pipe's thread (tests).
  void drain();

 private:
  friend class OriginalCapture;
  using Shared = OriginalCapture::Shared;
  struct Job {
    OriginalObject object;
    std::string path;                  // a finished file in the cache's temporary directory, or
    std::optional<std::string> bytes;  // the body in memory
  };

  bool claim(const std::string& digest);  // false: in flight already, or the queue is full
  void release(const std::string& digest);
  void enqueue(Job job);
  // The network side and the pipe's thread are both done: queue the commit or remove the file.
  void settle(Shared& shared);
  bool start_writer();  // false: too many pipe threads already
  void writer_done();
  void run();
  void commit(Job& job);
  void count(const std::string& kind, const char* result);

  cache::Cache& cache_;
  Metrics& metrics_;
  uint64_t max_bytes_;
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  std::deque<Job> queue_;
  std::set<std::string> in_flight_;  // digests being captured or committed
  bool busy_ = false;
  bool stop_ = false;
  int writers_ = 0;  // pipe threads running (detached; waited for at destruction)
  std::condition_variable writers_gone_;
  std::thread thread_;
};

}  // namespace accel
