// Streaming tar reader and writer (POSIX ustar, PAX, GNU extensions) for layer conversion.
//
// The reader turns an uncompressed layer stream into entries with their content readable in
// pieces; it understands PAX (path, linkpath, size, uid/gid, uname/gname, mtime/atime/ctime with
// sub-second precision, SCHILY.xattr.*), GNU long names and long links ('L', 'K'), base-256
// numeric fields, hardlinks, symlinks, devices, FIFOs, whiteouts (plain files named .wh.*), and
// sparse files (GNU old 'S' format and PAX 0.0/0.1/1.0), which it expands into regular files with
// the same content (holes read as zeros). It rejects malformed archives with a ConvertError:
// bad checksums, truncated entries, unsafe names ("../", absolute paths after normalisation is
// NOT done: names are kept as stored but any ".." component is refused), sizes beyond limits.
//
// The writer emits entries the way Go's archive/tar does for the same header (USTAR when every
// field fits, PAX records otherwise), so converted layers read back identically.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert/byte_source.hpp"

namespace accel::convert {

enum class EntryType : char {
  regular = '0',
  hardlink = '1',
  symlink = '2',
  char_device = '3',
  block_device = '4',
  directory = '5',
  fifo = '6',
};

struct TarTime {
  int64_t seconds = 0;      // may be negative (before 1970) or past 2038
  uint32_t nanoseconds = 0;
  bool operator==(const TarTime&) const = default;
};

struct TarEntry {
  std::string name;       // as stored (PAX path or GNU long name applied), e.g. "usr/bin/ls", "etc/"
  EntryType type = EntryType::regular;
  std::string link_name;  // hardlink target or symlink target
  uint32_t mode = 0;      // as stored: permission and setuid/setgid/sticky bits (07777); some
                          // writers also store file-type bits (0100644), kept like Go does
  uint64_t uid = 0, gid = 0;
  std::string uname, gname;
  TarTime mtime;
  std::optional<TarTime> atime, ctime;  // only when the archive carried them (PAX)
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t size = 0;  // content bytes (regular files; for sparse files the expanded size)
  std::map<std::string, std::string> xattrs;  // from SCHILY.xattr.<name>, values are raw bytes
  // PAX records not mapped to a field above (kept so nothing is silently lost).
  std::map<std::string, std::string> other_pax;
};

struct TarLimits {
  uint64_t max_total_bytes = uint64_t{64} << 30;  // sum of content sizes (tar bomb guard)
  uint64_t max_entry_bytes = uint64_t{64} << 30;
  size_t max_header_bytes = 1 << 20;              // PAX / GNU long-name record size
  size_t max_entries = 10'000'000;
};

class TarReader {
 public:
  TarReader(ByteSource& source, TarLimits limits = {});
  ~TarReader();

  // Advances to the next entry (skipping any unread content of the current one). Returns false
  // at the end of the archive (two zero blocks, or a clean EOF at a block boundary).
  bool next(TarEntry& entry);

  // Reads content of the current entry; 0 at its end. Sparse holes read as zeros.
  size_t read(void* out, size_t size);

  // Total uncompressed bytes consumed from the source so far (for progress and diffID checks).
  uint64_t bytes_consumed() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The reader's current entry's content as a ByteSource (for writers that pull content).
class TarEntryContent : public ByteSource {
 public:
  explicit TarEntryContent(TarReader& reader) : reader_(reader) {}
  size_t read(void* out, size_t size) override { return reader_.read(out, size); }

 private:
  TarReader& reader_;
};

// Encodes headers like Go's archive/tar Writer: a ustar header when every field fits, otherwise a
// PAX extended header ('x') first. Content is written by the caller, then pad().
class TarWriter {
 public:
  explicit TarWriter(ByteSink& sink);

  // Writes the header block(s) for `entry` (content size = entry.size for regular files, 0 else).
  void write_header(const TarEntry& entry);
  // Writes content bytes for the current entry.
  void write_content(const void* data, size_t size);
  // Writes zero padding to the next 512-byte boundary after the content.
  void pad();
  // Writes the two zero blocks that end an archive.
  void finish();

  // Encoded header bytes without writing them (for callers that place headers themselves).
  static std::string encode_header(const TarEntry& entry);

  uint64_t bytes_written() const { return written_; }

 private:
  ByteSink& sink_;
  uint64_t written_ = 0;
  uint64_t content_left_ = 0;
  uint64_t content_total_ = 0;
};

}  // namespace accel::convert
