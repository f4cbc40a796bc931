#include "convert/gzip_members.hpp"

#include <libdeflate.h>

namespace accel::convert {
namespace {

// One compressor per thread and level: allocation is costly, compression state is not shared.
libdeflate_compressor* thread_compressor(int level) {
  struct Cache {
    int level = -1;
    libdeflate_compressor* c = nullptr;
    ~Cache() {
      if (c) libdeflate_free_compressor(c);
    }
  };
  thread_local Cache cache;
  if (cache.level != level) {
    if (cache.c) libdeflate_free_compressor(cache.c);
    cache.c = libdeflate_alloc_compressor(level);
    cache.level = level;
    if (!cache.c) throw ConvertError("gzip: cannot allocate a compressor at level " + std::to_string(level));
  }
  return cache.c;
}

}  // namespace

std::string gzip_member(const void* data, size_t size, int level) {
  libdeflate_compressor* c = thread_compressor(level);
  std::string out(libdeflate_gzip_compress_bound(c, size), '\0');
  size_t n = libdeflate_gzip_compress(c, data, size, out.data(), out.size());
  if (n == 0) throw ConvertError("gzip: compression failed");
  out.resize(n);
  return out;
}

ParallelGzipWriter::ParallelGzipWriter(ByteSink& sink, int level, unsigned threads, size_t max_in_flight)
    : sink_(sink), level_(level), max_in_flight_(max_in_flight ? max_in_flight : std::max(2u, threads) * 4) {
  if (threads > 1)
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { worker(); });
}

ParallelGzipWriter::~ParallelGzipWriter() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto& t : threads_) t.join();
}

void ParallelGzipWriter::worker() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    std::string output;
    std::exception_ptr error;
    try {
      output = gzip_member(job->input.data(), job->input.size(), level_);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      job->output = std::move(output);
      job->input = std::string();
      job->done = true;
      if (error && !failure_) failure_ = error;
    }
    job_done_.notify_all();
  }
}

// Writes finished jobs from the front, in order; with `wait_for_all`, until none is left,
// otherwise until fewer than max_in_flight remain.
void ParallelGzipWriter::write_done_jobs(std::unique_lock<std::mutex>& lock, bool wait_for_all) {
  while (!in_order_.empty()) {
    auto& front = in_order_.front();
    if (!front->done) {
      if (!wait_for_all && in_order_.size() < max_in_flight_) return;
      job_done_.wait(lock, [&] { return front->done || failure_; });
      if (failure_) std::rethrow_exception(failure_);
      continue;
    }
    auto job = std::move(front);
    in_order_.pop_front();
    offsets_.push_back(written_);
    written_ += job->output.size();
    lock.unlock();  // the sink may be slow (disk, network): let workers go on meanwhile
    sink_.write(job->output.data(), job->output.size());
    lock.lock();
  }
}

size_t ParallelGzipWriter::submit(std::string uncompressed) {
  if (threads_.empty()) {
    std::string out = gzip_member(uncompressed.data(), uncompressed.size(), level_);
    offsets_.push_back(written_);
    written_ += out.size();
    sink_.write(out.data(), out.size());
    return offsets_.size() - 1;
  }
  std::unique_lock lock(mutex_);
  if (failure_) std::rethrow_exception(failure_);
  auto job = std::make_shared<Job>();
  job->input = std::move(uncompressed);
  in_order_.push_back(job);
  queue_.push_back(job);
  size_t index = offsets_.size() + in_order_.size() - 1;
  work_ready_.notify_one();
  write_done_jobs(lock, false);
  return index;
}

void ParallelGzipWriter::flush() {
  std::unique_lock lock(mutex_);
  write_done_jobs(lock, true);
  if (failure_) std::rethrow_exception(failure_);
}

void ParallelGzipWriter::write_raw(const void* data, size_t size) {
  flush();
  written_ += size;
  sink_.write(data, size);
}

}  // namespace accel::convert
