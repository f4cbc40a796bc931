#include "convert/streams.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <isa-l/igzip_lib.h>
#include <zstd.h>

namespace accel::convert {

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::none: return "none";
    case Compression::gzip: return "gzip";
    case Compression::zstd: return "zstd";
  }
  return "?";
}

// --- files ------------------------------------------------------------------------------------

FileSource::FileSource(const std::string& path, uint64_t offset) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw ConvertError("cannot open " + path + ": " + std::strerror(errno));
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
  if (offset > 0 && ::lseek(fd_, static_cast<off_t>(offset), SEEK_SET) < 0) {
    ::close(fd_);
    throw ConvertError("cannot seek in " + path + ": " + std::strerror(errno));
  }
}

FileSource::~FileSource() {
  if (fd_ >= 0) ::close(fd_);
}

size_t FileSource::read(void* out, size_t size) {
  while (true) {
    ssize_t n = ::read(fd_, out, size);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) throw ConvertError("cannot read " + path_ + ": " + std::strerror(errno));
  }
}

FileSink::FileSink(const std::string& path, Durability durability) : path_(path), durability_(durability) {
  temp_path_ = path + ".tmp-XXXXXX";
  fd_ = ::mkstemp(temp_path_.data());
  if (fd_ < 0) throw ConvertError("cannot create a file next to " + path + ": " + std::strerror(errno));
  buffer_.reserve(1 << 20);
}

FileSink::~FileSink() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void FileSink::write_out(const char* p, size_t left) {
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ConvertError("cannot write " + temp_path_ + ": " + std::strerror(errno));
    }
    p += n;
    left -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
  // Start writeback of what is complete, without waiting for it, so that the fsync in commit()
  // finds little left to do instead of the whole file (seconds for a large layer on a disk).
  // Advisory: an error here shows again, and is reported, at that fsync.
  if (durability_ == Durability::synced && written_ - writeback_from_ >= kWritebackBytes) {
    ::sync_file_range(fd_, static_cast<off_t>(writeback_from_), static_cast<off_t>(written_ - writeback_from_),
                      SYNC_FILE_RANGE_WRITE);
    writeback_from_ = written_;
  }
}

void FileSink::flush() {
  write_out(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void FileSink::write(const void* data, size_t size) {
  if (buffer_.size() + size > buffer_.capacity()) flush();
  if (size >= buffer_.capacity()) {  // large writes go straight out
    write_out(static_cast<const char*>(data), size);
    return;
  }
  buffer_.insert(buffer_.end(), static_cast<const char*>(data), static_cast<const char*>(data) + size);
}

void FileSink::commit() {
  flush();
  if (::fchmod(fd_, 0644) != 0 || (durability_ == Durability::synced && ::fsync(fd_) != 0))
    throw ConvertError("cannot sync " + temp_path_ + ": " + std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    throw ConvertError("cannot rename into " + path_ + ": " + std::strerror(errno));
  committed_ = true;
}

// --- hashing wrappers -------------------------------------------------------------------------

size_t MemorySource::read(void* out, size_t size) {
  size_t n = std::min({size, max_read_, bytes_.size() - position_});
  std::memcpy(out, bytes_.data() + position_, n);
  position_ += n;
  return n;
}

size_t HashingSource::read(void* out, size_t size) {
  size_t n = inner_.read(out, size);
  hash_.update(out, n);
  bytes_ += n;
  return n;
}

void HashingSink::write(const void* data, size_t size) {
  hash_.update(data, size);
  bytes_ += size;
  if (inner_) inner_->write(data, size);
}

void drain(ByteSource& source) {
  std::vector<char> buf(1 << 16);
  while (source.read(buf.data(), buf.size()) > 0) {
  }
}

// --- decompression ----------------------------------------------------------------------------

namespace {

constexpr size_t kInputBuffer = 256 * 1024;

// Buffers input for a decompressor, starting with bytes already read to sniff the format.
class InputBuffer {
 public:
  InputBuffer(ByteSource& source, std::string prefix) : source_(source), buffer_(kInputBuffer) {
    std::memcpy(buffer_.data(), prefix.data(), prefix.size());
    end_ = prefix.size();
  }
  // Refills when empty; returns false at end of input.
  bool fill() {
    if (pos_ < end_) return true;
    pos_ = 0;
    end_ = source_.read(buffer_.data(), buffer_.size());
    return end_ > 0;
  }
  const unsigned char* data() const { return reinterpret_cast<const unsigned char*>(buffer_.data()) + pos_; }
  size_t size() const { return end_ - pos_; }
  void consume(size_t n) { pos_ += n; }

 private:
  ByteSource& source_;
  std::vector<char> buffer_;
  size_t pos_ = 0, end_ = 0;
};

class PlainSource : public ByteSource {
 public:
  PlainSource(ByteSource& inner, std::string prefix) : inner_(inner), prefix_(std::move(prefix)) {}
  size_t read(void* out, size_t size) override {
    if (pos_ < prefix_.size()) {
      size_t n = std::min(size, prefix_.size() - pos_);
      std::memcpy(out, prefix_.data() + pos_, n);
      pos_ += n;
      return n;
    }
    return inner_.read(out, size);
  }

 private:
  ByteSource& inner_;
  std::string prefix_;
  size_t pos_ = 0;
};

// gzip with ISA-L's inflate: about twice zlib's speed here, and decompression sits on the
// conversion's one sequential thread (docs/DECISIONS.md). Header and trailer (CRC-32, size)
// are checked by ISA-L; members follow one another until the input ends.
class GzipSource : public ByteSource {
 public:
  GzipSource(ByteSource& inner, std::string prefix) : input_(inner, std::move(prefix)) { start_member(); }

  size_t read(void* out, size_t size) override {
    if (finished_ || size == 0) return 0;
    auto* first = static_cast<uint8_t*>(out);
    state_.next_out = first;
    state_.avail_out = static_cast<uint32_t>(std::min<size_t>(size, 1u << 30));
    while (state_.avail_out > 0) {
      if (state_.block_state == ISAL_BLOCK_FINISH) {
        // Another member follows, or the stream ends; anything else is corruption.
        if (!input_.fill()) {
          finished_ = true;
          break;
        }
        if (input_.data()[0] != 0x1f) throw ConvertError("gzip: trailing garbage after the last member");
        uint8_t* next_out = state_.next_out;
        uint32_t avail_out = state_.avail_out;
        start_member();
        state_.next_out = next_out;
        state_.avail_out = avail_out;
      }
      if (!input_.fill()) throw ConvertError("gzip: truncated stream (unexpected end of input)");
      state_.next_in = const_cast<uint8_t*>(input_.data());
      state_.avail_in = static_cast<uint32_t>(std::min<size_t>(input_.size(), 1u << 30));
      const uint32_t offered = state_.avail_in;
      int rc = isal_inflate(&state_);
      input_.consume(offered - state_.avail_in);
      if (rc != ISAL_DECOMP_OK) throw ConvertError(std::string("gzip: corrupt stream: ") + isal_error(rc));
      if (state_.next_out != first && state_.avail_out < size / 2) break;
    }
    return static_cast<size_t>(state_.next_out - first);
  }

 private:
  void start_member() {
    isal_inflate_init(&state_);
    state_.crc_flag = ISAL_GZIP;  // parse the header, verify the trailer
  }
  static const char* isal_error(int rc) {
    switch (rc) {
      case ISAL_INVALID_BLOCK: return "invalid deflate block";
      case ISAL_INVALID_SYMBOL: return "invalid deflate symbol";
      case ISAL_INVALID_LOOKBACK: return "invalid back-reference distance";
      case ISAL_INVALID_WRAPPER: return "invalid gzip header";
      case ISAL_UNSUPPORTED_METHOD: return "unsupported compression method";
      case ISAL_INCORRECT_CHECKSUM: return "CRC or length mismatch in the trailer";
      case ISAL_NEED_DICT: return "preset dictionary required";
      default: return "inflate failed";
    }
  }

  InputBuffer input_;
  inflate_state state_;
  bool finished_ = false;
};

class ZstdSource : public ByteSource {
 public:
  ZstdSource(ByteSource& inner, std::string prefix) : input_(inner, std::move(prefix)), ctx_(ZSTD_createDCtx()) {
    if (!ctx_) throw ConvertError("zstd: cannot create a decompression context");
  }
  ~ZstdSource() override { ZSTD_freeDCtx(ctx_); }

  size_t read(void* out, size_t size) override {
    ZSTD_outBuffer o{out, size, 0};
    while (o.pos == 0) {
      if (!input_.fill()) {
        if (frame_open_) throw ConvertError("zstd: truncated stream (unexpected end of input)");
        return 0;
      }
      ZSTD_inBuffer in{input_.data(), input_.size(), 0};
      size_t rc = ZSTD_decompressStream(ctx_, &o, &in);
      input_.consume(in.pos);
      if (ZSTD_isError(rc)) throw ConvertError(std::string("zstd: corrupt stream: ") + ZSTD_getErrorName(rc));
      frame_open_ = rc != 0;
      if (o.pos == o.size) break;
    }
    return o.pos;
  }

 private:
  InputBuffer input_;
  ZSTD_DCtx* ctx_;
  bool frame_open_ = false;
};

}  // namespace

std::unique_ptr<ByteSource> open_decompressed(ByteSource& compressed, Compression* detected) {
  std::string prefix(4, '\0');
  size_t got = 0;
  while (got < prefix.size()) {
    size_t n = compressed.read(prefix.data() + got, prefix.size() - got);
    if (n == 0) break;
    got += n;
  }
  prefix.resize(got);
  auto byte = [&](size_t i) { return static_cast<unsigned char>(prefix[i]); };
  Compression c = Compression::none;
  if (got >= 2 && byte(0) == 0x1f && byte(1) == 0x8b) c = Compression::gzip;
  else if (got >= 4 && byte(0) == 0x28 && byte(1) == 0xb5 && byte(2) == 0x2f && byte(3) == 0xfd) c = Compression::zstd;
  if (detected) *detected = c;
  switch (c) {
    case Compression::gzip: return std::make_unique<GzipSource>(compressed, std::move(prefix));
    case Compression::zstd: return std::make_unique<ZstdSource>(compressed, std::move(prefix));
    default: return std::make_unique<PlainSource>(compressed, std::move(prefix));
  }
}

}  // namespace accel::convert
