// Parallel, deterministic gzip: a sequence of independent gzip members is compressed on a pool
// of threads (libdeflate) and written to the sink in submission order. A member's bytes depend
// only on its input and the level, never on the thread count, so outputs are reproducible.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "convert/byte_source.hpp"

namespace accel::convert {

// One gzip member made of `data` (header, deflate stream, CRC and size; MTIME 0).
std::string gzip_member(const void* data, size_t size, int level);

class ParallelGzipWriter {
 public:
  // `threads` 0 or 1 compresses on the caller's thread. At most `max_in_flight` members are
  // queued or compressing at once (bounded memory).
  ParallelGzipWriter(ByteSink& sink, int level, unsigned threads, size_t max_in_flight = 0);
  ~ParallelGzipWriter();
  ParallelGzipWriter(const ParallelGzipWriter&) = delete;
  ParallelGzipWriter& operator=(const ParallelGzipWriter&) = delete;

  // Queues one member; returns its index.
  size_t submit(std::string uncompressed);
  // Writes everything queued so far; afterwards offset_of() is valid for every member.
  void flush();
  // Writes bytes that are not to be compressed (e.g. a footer), after all queued members.
  void write_raw(const void* data, size_t size);

  uint64_t offset_of(size_t member) const { return offsets_.at(member); }
  uint64_t bytes_written() const { return written_; }

 private:
  struct Job {
    std::string input;
    std::string output;
    bool done = false;
  };
  void worker();
  void write_done_jobs(std::unique_lock<std::mutex>& lock, bool wait_for_all);

  ByteSink& sink_;
  int level_;
  size_t max_in_flight_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable work_ready_, job_done_;
  std::deque<std::shared_ptr<Job>> in_order_;  // submitted, not yet written
  std::deque<std::shared_ptr<Job>> queue_;     // not yet picked by a worker
  bool stopping_ = false;
  std::vector<uint64_t> offsets_;
  uint64_t written_ = 0;
  std::exception_ptr failure_;
};

}  // namespace accel::convert
