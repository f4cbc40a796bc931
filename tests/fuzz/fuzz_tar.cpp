// libFuzzer target: the input read as a tar archive through TarReader, all content read. Malformed
// input must end in a ConvertError, never a crash, hang or unbounded allocation. Each entry that
// reads cleanly is re-encoded with TarWriter and read back: it must come back identical.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "convert/streams.hpp"
#include "convert/tar.hpp"

using namespace accel::convert;

namespace {

// Hands out the input in small, varying pieces so buffer edges are exercised too.
class InputSource : public ByteSource {
 public:
  InputSource(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t read(void* out, size_t want) override {
    size_t piece = 1 + (position_ * 31 + 7) % 1500;
    size_t n = std::min({want, piece, size_ - position_});
    std::memcpy(out, data_ + position_, n);
    position_ += n;
    return n;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t position_ = 0;
};

// Small limits keep every run fast: a sparse file may expand to at most max_entry_bytes.
TarLimits fuzz_limits() {
  TarLimits limits;
  limits.max_total_bytes = 1 << 20;
  limits.max_entry_bytes = 256 << 10;
  limits.max_header_bytes = 64 << 10;
  limits.max_entries = 1000;
  return limits;
}

bool same(const TarEntry& a, const TarEntry& b) {
  return a.name == b.name && a.type == b.type && a.link_name == b.link_name && a.mode == b.mode && a.uid == b.uid &&
         a.gid == b.gid && a.uname == b.uname && a.gname == b.gname && a.mtime == b.mtime && a.atime == b.atime &&
         a.ctime == b.ctime && a.dev_major == b.dev_major && a.dev_minor == b.dev_minor && a.size == b.size &&
         a.xattrs == b.xattrs && a.other_pax == b.other_pax;
}

// Entries the writer accepts must read back unchanged.
void check_round_trip(const TarEntry& entry, const std::string& content) {
  StringSink sink;
  TarWriter writer(sink);
  try {
    writer.write_header(entry);
  } catch (const ConvertError&) {
    return;  // not encodable (e.g. a regular file named "x/"): refused, fine
  }
  writer.write_content(content.data(), content.size());
  writer.finish();
  MemorySource source(sink.data);
  TarLimits limits = fuzz_limits();
  limits.max_header_bytes = 4 << 20;  // re-encoded records may be a little longer
  TarReader reader(source, limits);
  TarEntry back;
  if (!reader.next(back) || !same(back, entry)) __builtin_trap();
  std::string back_content(content.size() + 1, '\0');
  size_t got = 0;
  while (size_t n = reader.read(back_content.data() + got, back_content.size() - got)) got += n;
  if (got != content.size() || back_content.compare(0, got, content) != 0) __builtin_trap();
  if (reader.next(back)) __builtin_trap();
  if (reader.bytes_consumed() != sink.data.size()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  InputSource source(data, size);
  TarReader reader(source, fuzz_limits());
  TarEntry entry;
  std::vector<char> buffer(1 + size % 9000);
  try {
    while (reader.next(entry)) {
      std::string content;
      while (size_t n = reader.read(buffer.data(), buffer.size())) content.append(buffer.data(), n);
      if (content.size() != entry.size) __builtin_trap();
      check_round_trip(entry, content);
    }
    if (reader.bytes_consumed() > size) __builtin_trap();
  } catch (const ConvertError&) {
    // malformed input: the expected way to fail
  }
  return 0;
}
