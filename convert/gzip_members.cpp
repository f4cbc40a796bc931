#include "convert/gzip_members.hpp"

#include <libdeflate.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "convert/sha256.hpp"

namespace accel::convert {
namespace {

// Incompressible-data test, in two steps. First every kBlockBytes block (and a last, shorter
// block of at least kMinTailBytes) must look uniformly random byte by byte, else Huffman coding
// alone would gain; the statistic is integer-only, so the decision is the same on every
// machine. Then the data must not repeat itself where deflate's 32 KiB window would find it:
// content of kMinSampledBytes or more is sampled, up to kMaxSamples slices of kSampleBytes
// spread evenly that must each fail to compress at level 1 (a sample spans twice the window);
// smaller content, the .gz man pages and changelogs a Debian image is full of, is searched
// whole for repeated 8-byte strings, which costs a tenth of compressing it. Content under
// kMinTestedBytes is always deflated.
constexpr size_t kBlockBytes = 4096;
constexpr size_t kMinTailBytes = 1024;
// Chi-square of a block's byte counts against uniform, 256·Σc²/n − n, is about 255 ± 23 for
// random bytes of any block length and in the thousands for text or code.
constexpr uint64_t kMaxRandomChiSquare = 400;
constexpr size_t kMaxSamples = 8;
constexpr size_t kSampleBytes = 64 * 1024;
constexpr size_t kMinSampledBytes = 256 * 1024;
constexpr size_t kMinTestedBytes = 4096;
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

bool looks_random(const unsigned char* bytes, size_t size) {
  uint32_t counts[256] = {};
  for (size_t i = 0; i < size; ++i) ++counts[bytes[i]];
  uint64_t squares = 0;
  for (uint32_t c : counts) squares += uint64_t{c} * c;
  return 256 * squares <= (size + kMaxRandomChiSquare) * size;
}

// Whether LZ77 matches would save 1% of the data: every position is looked up among the
// positions at multiples of 8 seen in the last 32 KiB, by the 8 bytes that start there. Random
// data has no such repeats (one pair in 2^64 agrees by chance), so each hit is a real repeat,
// found once per 8 bytes of it.
bool repeats_itself(const unsigned char* bytes, size_t size) {
  constexpr unsigned kHashBits = 13;
  constexpr size_t kWindow = 32 * 1024;
  thread_local uint32_t last_at[1u << kHashBits];  // position + 1 of the latest 8-byte string, 0: none
  std::memset(last_at, 0, sizeof last_at);
  size_t repeated = 0;
  for (size_t at = 0; at + 8 <= size; ++at) {
    uint64_t word;
    std::memcpy(&word, bytes + at, 8);
    const uint32_t slot = static_cast<uint32_t>((word * 0x9E3779B97F4A7C15ull) >> (64 - kHashBits));
    const uint32_t seen = last_at[slot];
    if (seen && at + 1 - seen <= kWindow && std::memcmp(bytes + seen - 1, bytes + at, 8) == 0) {
      repeated += 8;
      if (repeated * 1000 >= size * kSavingPerMille) return true;
      at += 7;
      continue;
    }
    if (at % 8 == 0) last_at[slot] = static_cast<uint32_t>(at + 1);
  }
  return false;
}

void put_le16(std::string& out, uint32_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>((v >> 8) & 0xff);
}

void put_le32(std::string& out, uint32_t v) {
  put_le16(out, v & 0xffff);
  put_le16(out, v >> 16);
}

// A gzip member whose first `stored` bytes go into stored deflate blocks and the rest, if any,
// is deflated at `level`. Stored blocks end on a byte boundary, so libdeflate's raw stream for
// the rest (whose last block is the final one) follows them as it is.
std::string gzip_member_stored_prefix(const unsigned char* data, size_t size, size_t stored, int level) {
  constexpr size_t kMaxStoredBlock = 65535;
  const size_t rest = size - stored;
  libdeflate_compressor* c = rest ? thread_compressor(level) : nullptr;
  std::string out;
  out.reserve(10 + stored + 5 * (stored / kMaxStoredBlock + 1) + (c ? libdeflate_deflate_compress_bound(c, rest) : 0) + 8);
  // The header libdeflate writes: no flags, no MTIME, XFL from the level, OS unknown.
  out.append("\x1f\x8b\x08\x00\x00\x00\x00\x00", 8);
  out += static_cast<char>(rest == 0 || level < 2 ? 4 : level >= 8 ? 2 : 0);
  out += '\xff';
  for (size_t at = 0; at < stored;) {
    const size_t n = std::min(kMaxStoredBlock, stored - at);
    const bool final = at + n == stored && rest == 0;
    out += static_cast<char>(final ? 1 : 0);  // BFINAL, BTYPE 00 (stored), padding to the byte
    put_le16(out, static_cast<uint32_t>(n));
    put_le16(out, static_cast<uint32_t>(~n & 0xffff));
    out.append(reinterpret_cast<const char*>(data + at), n);
    at += n;
  }
  if (rest) {
    const size_t from = out.size();
    out.resize(from + libdeflate_deflate_compress_bound(c, rest));
    size_t n = libdeflate_deflate_compress(c, data + stored, rest, out.data() + from, out.size() - from);
    if (n == 0) throw ConvertError("gzip: compression failed");
    out.resize(from + n);
  }
  put_le32(out, libdeflate_crc32(0, data, size));
  put_le32(out, static_cast<uint32_t>(size));
  return out;
}

}  // namespace

bool looks_incompressible(const void* data, size_t size) {
  if (size < kMinTestedBytes) return false;
  const auto* bytes = static_cast<const unsigned char*>(data);
  size_t at = 0;
  for (; at + kBlockBytes <= size; at += kBlockBytes)
    if (!looks_random(bytes + at, kBlockBytes)) return false;
  if (size - at >= kMinTailBytes && !looks_random(bytes + at, size - at)) return false;
  if (size < kMinSampledBytes) return !repeats_itself(bytes, size);
  thread_local std::string out;
  libdeflate_compressor* c = thread_compressor(1);
  out.resize(libdeflate_deflate_compress_bound(c, kSampleBytes));
  const size_t samples = std::clamp<size_t>(size / (512 * 1024), 2, kMaxSamples);
  for (size_t i = 0; i < samples; ++i) {
    const size_t from = i * (size - kSampleBytes) / (samples - 1);
    size_t n = libdeflate_deflate_compress(c, bytes + from, kSampleBytes, out.data(), out.size());
    if (n != 0 && n * 1000 < kSampleBytes * (1000 - kSavingPerMille)) return false;
  }
  return true;
}

std::string gzip_member(const void* data, size_t size, int level, size_t content_size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  content_size = std::min(content_size, size);
  if (level > 0 && looks_incompressible(bytes, content_size))
    return gzip_member_stored_prefix(bytes, size, content_size, level);
  libdeflate_compressor* c = thread_compressor(level);
  // Compress into a buffer kept by the thread, then copy out what was produced: a fresh
  // compress_bound()-sized string would be zero-filled and page-faulted in for every member.
  thread_local std::vector<char> scratch;
  scratch.resize(std::max(scratch.size(), libdeflate_gzip_compress_bound(c, size)));
  size_t n = libdeflate_gzip_compress(c, data, size, scratch.data(), scratch.size());
  if (n == 0) throw ConvertError("gzip: compression failed");
  return std::string(scratch.data(), n);
}

void ParallelGzipWriter::run(Job& job, int level) {
  if (job.digest_prefix) job.digest = Sha256::of(std::string_view(job.input).substr(0, job.digest_prefix));
  job.output = gzip_member(job.input.data(), job.input.size(), level, job.digest_prefix);
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
