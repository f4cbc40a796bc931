#include "convert/gzip_members.hpp"

#include <libdeflate.h>

#include <algorithm>

#include "convert/sha256.hpp"

namespace accel::convert {
namespace {

// Incompressible-data test, in two steps. First every kBlockBytes block must look uniformly
// random byte by byte (else Huffman coding alone would gain); the statistic is integer-only,
// so the decision is the same on every machine. Then up to kMaxSamples slices of kSampleBytes,
// spread evenly, must each fail to compress at level 1 (repeats that only LZ matching finds: a
// sample spans twice deflate's 32 KiB window). Data under kMinSampledBytes is always deflated:
// testing would cost too much of it.
constexpr size_t kBlockBytes = 4096;
// Chi-square of a block's byte counts against uniform, 256·Σc²/n − n, is about 255 ± 23 for
// random bytes and in the thousands for text or code.
constexpr uint64_t kMaxRandomChiSquare = 400;
constexpr size_t kMaxSamples = 8;
constexpr size_t kSampleBytes = 64 * 1024;
constexpr size_t kMinSampledBytes = 256 * 1024;
// A sample counts as compressible when level 1 saves at least 1% of it.
constexpr size_t kSavingPerMille = 10;
// Bounds the bookkeeping when members are tiny.
constexpr size_t kMaxJobsInFlight = 4096;

// One compressor per thread and level: allocation is costly, compression state is not shared.
libdeflate_compressor* thread_compressor(int level) {
  struct Cache {
    libdeflate_compressor* by_level[13] = {};
    ~Cache() {
      for (auto* c : by_level)
        if (c) libdeflate_free_compressor(c);
    }
  };
  thread_local Cache cache;
  if (level < 0 || level > 12) throw ConvertError("gzip: compression level " + std::to_string(level) + " is not in 0..12");
  auto*& c = cache.by_level[level];
  if (!c) c = libdeflate_alloc_compressor(level);
  if (!c) throw ConvertError("gzip: cannot allocate a compressor at level " + std::to_string(level));
  return c;
}

}  // namespace

bool looks_incompressible(const void* data, size_t size) {
  if (size < kMinSampledBytes) return false;
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t at = 0; at + kBlockBytes <= size; at += kBlockBytes) {
    uint32_t counts[256] = {};
    for (size_t i = 0; i < kBlockBytes; ++i) ++counts[bytes[at + i]];
    uint64_t squares = 0;
    for (uint32_t c : counts) squares += uint64_t{c} * c;
    if (256 * squares > (kBlockBytes + kMaxRandomChiSquare) * kBlockBytes) return false;
  }
  thread_local std::string out;
  libdeflate_compressor* c = thread_compressor(1);
  out.resize(libdeflate_deflate_compress_bound(c, kSampleBytes));
  const size_t samples = std::clamp<size_t>(size / (512 * 1024), 2, kMaxSamples);
  for (size_t i = 0; i < samples; ++i) {
    const size_t at = i * (size - kSampleBytes) / (samples - 1);
    size_t n = libdeflate_deflate_compress(c, bytes + at, kSampleBytes, out.data(), out.size());
    if (n != 0 && n * 1000 < kSampleBytes * (1000 - kSavingPerMille)) return false;
  }
  return true;
}

std::string gzip_member(const void* data, size_t size, int level) {
  if (level > 0 && looks_incompressible(data, size)) level = 0;
  libdeflate_compressor* c = thread_compressor(level);
  std::string out(libdeflate_gzip_compress_bound(c, size), '\0');
  size_t n = libdeflate_gzip_compress(c, data, size, out.data(), out.size());
  if (n == 0) throw ConvertError("gzip: compression failed");
  out.resize(n);
  return out;
}

void ParallelGzipWriter::run(Job& job, int level) {
  if (job.digest_prefix) job.digest = Sha256::of(std::string_view(job.input).substr(0, job.digest_prefix));
  job.output = gzip_member(job.input.data(), job.input.size(), level);
}

ParallelGzipWriter::ParallelGzipWriter(ByteSink& sink, int level, unsigned threads, size_t max_in_flight_bytes)
    : sink_(sink),
      level_(level),
      max_in_flight_bytes_(max_in_flight_bytes ? max_in_flight_bytes : std::max(2u, threads) * (12u << 20)) {
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
    // The job is this worker's alone until `done` is set under the lock.
    std::exception_ptr error;
    try {
      run(*job, level_);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      job->input = std::string();
      job->done = true;
      if (error && !failure_) failure_ = error;
    }
    job_done_.notify_all();
  }
}

// Writes finished jobs from the front, in order; with `wait_for_all`, until none is left,
// otherwise until less than max_in_flight_bytes_ of input remain in flight.
void ParallelGzipWriter::write_done_jobs(std::unique_lock<std::mutex>& lock, bool wait_for_all) {
  while (!in_order_.empty()) {
    auto& front = in_order_.front();
    if (!front->done) {
      if (!wait_for_all && in_flight_bytes_ < max_in_flight_bytes_ && in_order_.size() < kMaxJobsInFlight) return;
      job_done_.wait(lock, [&] { return front->done || failure_; });
      if (failure_) std::rethrow_exception(failure_);
      continue;
    }
    auto job = std::move(front);
    in_order_.pop_front();
    in_flight_bytes_ -= job->input_size;
    offsets_.push_back(written_);
    digests_.push_back(std::move(job->digest));
    written_ += job->output.size();
    lock.unlock();  // the sink may be slow (disk, network): let workers go on meanwhile
    sink_.write(job->output.data(), job->output.size());
    lock.lock();
  }
}

size_t ParallelGzipWriter::submit(std::string uncompressed, size_t digest_prefix) {
  auto job = std::make_shared<Job>();
  job->input = std::move(uncompressed);
  job->input_size = job->input.size();
  job->digest_prefix = std::min(digest_prefix, job->input.size());
  if (threads_.empty()) {
    run(*job, level_);
    offsets_.push_back(written_);
    digests_.push_back(std::move(job->digest));
    written_ += job->output.size();
    sink_.write(job->output.data(), job->output.size());
    return offsets_.size() - 1;
  }
  std::unique_lock lock(mutex_);
  if (failure_) std::rethrow_exception(failure_);
  in_flight_bytes_ += job->input_size;
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
