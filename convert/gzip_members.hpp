// Parallel, deterministic gzip: a sequence of independent gzip members is compressed on a pool
// of threads (libdeflate) and written to the sink in submission order. A member's bytes depend
// only on its input and the level, never on the thread count, so outputs are reproducible.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "convert/byte_source.hpp"

namespace accel::convert {

// One gzip member made of `data` (header, deflate stream, CRC and size; MTIME 0). The first
// `content_size` bytes are a file's content, the rest tar framing (padding, the next headers):
// content that looks_incompressible() is stored (deflate's stored blocks) and only the framing is
// deflated. The result depends only on the data, `content_size` and the level.
std::string gzip_member(const void* data, size_t size, int level, size_t content_size = SIZE_MAX);

// Whether the data is random or already compressed (every block byte-uniform, no repeats
// deflate's window would find), so that deflating it would only cost time. Data under 4 KiB is
// never tested: always false.
bool looks_incompressible(const void* data, size_t size);

class ParallelGzipWriter {
 public:
  // `threads` 0 or 1 compresses on the caller's thread. At most `max_in_flight_bytes` of input
  // are queued or compressing at once (bounded memory; 0: 12 MiB a thread).
  ParallelGzipWriter(ByteSink& sink, int level, unsigned threads, size_t max_in_flight_bytes = 0);
  ~ParallelGzipWriter();
  ParallelGzipWriter(const ParallelGzipWriter&) = delete;
  ParallelGzipWriter& operator=(const ParallelGzipWriter&) = delete;

  // Queues one member; returns its index. Its first `digest_prefix` bytes are file content: their
  // SHA-256 is computed too (on a worker), for digest_of(), and they may be stored if
  // incompressible (see gzip_member).
  size_t submit(std::string uncompressed, size_t digest_prefix = 0);
  // Writes everything queued so far; afterwards offset_of() is valid for every member.
  void flush();
  // Writes bytes that are not to be compressed (e.g. a footer), after all queued members.
  void write_raw(const void* data, size_t size);

  uint64_t offset_of(size_t member) const { return offsets_.at(member); }
  // "sha256:<hex>" of the prefix asked for at submit(); valid after flush().
  const std::string& digest_of(size_t member) const { return digests_.at(member); }
  uint64_t bytes_written() const { return written_; }

 private:
  struct Job {
    std::string input;
    size_t input_size = 0;
    size_t digest_prefix = 0;
    std::string output;
    std::string digest;
    bool done = false;
  };
  static void run(Job& job, int level);
  void worker();
  void write_done_jobs(std::unique_lock<std::mutex>& lock, bool wait_for_all);

  ByteSink& sink_;
  int level_;
  size_t max_in_flight_bytes_;
  size_t in_flight_bytes_ = 0;  // input bytes of the jobs in in_order_
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable work_ready_, job_done_;
  std::deque<std::shared_ptr<Job>> in_order_;  // submitted, not yet written
  std::deque<std::shared_ptr<Job>> queue_;     // not yet picked by a worker
  bool stopping_ = false;
  std::vector<uint64_t> offsets_;
  std::vector<std::string> digests_;
  uint64_t written_ = 0;
  std::exception_ptr failure_;
};

}  // namespace accel::convert
