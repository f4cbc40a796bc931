// Streaming tar reader (see tar.hpp). It follows Go's archive/tar Reader, which the reference
// converters and tar-split use, so that entries read here match what they see. Where it differs
// it is stricter, never more lenient:
//   - EOF anywhere inside an entry (header, extension block, content or its padding) is an error;
//     Go treats EOF inside the final padding as a clean end.
//   - negative sizes, ids, modes and device numbers are refused (Go only refuses negative sizes).
//   - entry types other than 0-7, '\0', 'S' (and the meta headers x, L, K) are refused, as are
//     GNU sparse PAX versions other than 0.0, 0.1 and 1.0 (Go passes them through as regular
//     files with the still-encoded sparse data as content).
//   - PAX global headers ('g') are refused. POSIX says their records apply to every following
//     entry; Go instead returns them as an entry of their own and applies nothing, and the
//     reference eStargz / zstd:chunked converters fail on them. Applying them here would give
//     entries that differ from what those tools see, so the layer is not converted and the
//     caller serves it unchanged.
//   - names and hardlink targets with a ".." component, or with a NUL byte, are refused.
//   - a sparse map must cover exactly the stored data (Go checks this lazily while reading).
#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "convert/tar.hpp"
#include "convert/tar_format.hpp"

namespace accel::convert {
namespace {

using namespace tar_format;
using Block = std::array<char, kBlockSize>;

constexpr size_t kBufferSize = 64 * 1024;
// Content reads at least this large, with nothing buffered, go straight into the caller's memory.
constexpr size_t kDirectReadMin = 16 * 1024;
// After any non-zero block, the next two blocks still belong to the archive (at worst they are
// the end-of-archive marker), so they may be read ahead without overrunning the archive's end.
constexpr uint64_t kSafeLookahead = 2 * kBlockSize;

[[noreturn]] void fail(const std::string& message) { throw ConvertError("tar: " + message); }

// A name or value for an error message: shortened, control characters shown as '?'.
std::string quoted(std::string_view name) {
  std::string out = "'";
  for (char c : name.substr(0, 200)) out += (static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  if (name.size() > 200) out += "...";
  return out + "'";
}

// Reads the source through a buffer, never asking it for bytes beyond what the caller says
// belongs to the archive (`ahead`), so whatever follows the end-of-archive marker stays in the
// source for the caller.
class BufferedInput {
 public:
  explicit BufferedInput(ByteSource& source) : source_(source), buffer_(kBufferSize) {}

  uint64_t consumed() const { return consumed_; }

  // Copies up to `size` bytes to `out`; `ahead` (>= size) is how many bytes from the current
  // position are known to be in the archive. Returns 0 only at the end of the source.
  size_t read_some(char* out, size_t size, uint64_t ahead) {
    if (size == 0) return 0;
    if (begin_ == end_) {
      if (size >= kDirectReadMin) {
        size_t n = source_.read(out, size);
        consumed_ += n;
        return n;
      }
      if (!fill(ahead)) return 0;
    }
    size_t n = std::min(size, end_ - begin_);
    std::memcpy(out, buffer_.data() + begin_, n);
    begin_ += n;
    consumed_ += n;
    return n;
  }

  // Like read_some but keeps going until `size` bytes or the end; returns the count read.
  size_t read_full(char* out, size_t size, uint64_t ahead) {
    size_t done = 0;
    while (done < size) {
      size_t n = read_some(out + done, size - done, ahead - done);
      if (n == 0) break;
      done += n;
    }
    return done;
  }

  // Discards up to `size` bytes; returns how many were there.
  uint64_t skip(uint64_t size, uint64_t ahead) {
    uint64_t done = 0;
    while (done < size) {
      if (begin_ == end_ && !fill(ahead - done)) break;
      size_t n = static_cast<size_t>(std::min<uint64_t>(size - done, end_ - begin_));
      begin_ += n;
      consumed_ += n;
      done += n;
    }
    return done;
  }

 private:
  // Refills the (empty) buffer with one source read of at most `ahead` bytes.
  bool fill(uint64_t ahead) {
    begin_ = end_ = 0;
    size_t want = static_cast<size_t>(std::min<uint64_t>(buffer_.size(), ahead));
    if (want == 0) return false;
    end_ = source_.read(buffer_.data(), want);
    return end_ > 0;
  }

  ByteSource& source_;
  std::vector<char> buffer_;
  size_t begin_ = 0, end_ = 0;
  uint64_t consumed_ = 0;
};

// --- header fields ----------------------------------------------------------------------------

std::string_view field_of(const Block& block, Field f) { return {block.data() + f.offset, f.size}; }

// A NUL-terminated string field (the whole field when it has no NUL).
std::string parse_string(std::string_view field) { return std::string(field.substr(0, field.find('\0'))); }

// Octal as Go reads it: surrounding spaces and NULs ignored, digits up to the first NUL.
std::optional<int64_t> parse_octal(std::string_view field) {
  size_t first = field.find_first_not_of(std::string_view(" \0", 2));
  if (first == std::string_view::npos) return 0;
  size_t last = field.find_last_not_of(std::string_view(" \0", 2));
  std::string_view digits = field.substr(first, last - first + 1);
  digits = digits.substr(0, digits.find('\0'));
  if (digits.empty()) return std::nullopt;
  uint64_t value = 0;
  for (char c : digits) {
    if (c < '0' || c > '7' || value > (std::numeric_limits<uint64_t>::max() >> 3)) return std::nullopt;
    value = value * 8 + static_cast<uint64_t>(c - '0');
  }
  if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(value);
}

// Octal, or GNU base-256 when the top bit of the first byte is set: the remaining bits are a
// big-endian two's complement number (0x40 in the first byte marks a negative one).
std::optional<int64_t> parse_numeric(std::string_view field) {
  if (field.empty() || !(static_cast<unsigned char>(field[0]) & 0x80)) return parse_octal(field);
  unsigned char invert = (static_cast<unsigned char>(field[0]) & 0x40) ? 0xff : 0x00;
  uint64_t value = 0;
  for (size_t i = 0; i < field.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(field[i]) ^ invert;
    if (i == 0) c &= 0x7f;
    if (value >> 56) return std::nullopt;  // would overflow 64 bits
    value = (value << 8) | c;
  }
  if (value >> 63) return std::nullopt;
  return invert ? ~static_cast<int64_t>(value) : static_cast<int64_t>(value);
}

// Decimal with an optional sign, as Go's strconv.ParseInt(s, 10, 64).
std::optional<int64_t> parse_decimal(std::string_view s) {
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return std::nullopt;
  uint64_t value = 0;
  const uint64_t limit = negative ? uint64_t{1} << 63 : (uint64_t{1} << 63) - 1;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    if (value > (limit - static_cast<uint64_t>(c - '0')) / 10) return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return negative ? static_cast<int64_t>(0 - value) : static_cast<int64_t>(value);
}

// PAX time "%d[.%d]": any number of fraction digits (beyond nanoseconds they are dropped); a
// leading '-' makes the whole value negative ("-1.5" is 1.5 s before the epoch).
std::optional<TarTime> parse_pax_time(std::string_view s) {
  size_t dot = s.find('.');
  std::string_view whole = s.substr(0, dot);
  std::string_view fraction = dot == std::string_view::npos ? std::string_view{} : s.substr(dot + 1);
  auto seconds = parse_decimal(whole);
  if (!seconds) return std::nullopt;
  if (fraction.empty()) return TarTime{*seconds, 0};
  uint32_t nanos = 0;
  for (size_t i = 0; i < 9; ++i) {
    char c = i < fraction.size() ? fraction[i] : '0';
    if (c < '0' || c > '9') return std::nullopt;
    nanos = nanos * 10 + static_cast<uint32_t>(c - '0');
  }
  for (char c : fraction)
    if (c < '0' || c > '9') return std::nullopt;
  bool negative = whole.starts_with('-');
  if (!negative || nanos == 0) return TarTime{*seconds, nanos};
  if (*seconds == std::numeric_limits<int64_t>::min()) return std::nullopt;
  return TarTime{*seconds - 1, 1'000'000'000 - nanos};  // keep nanoseconds non-negative
}

enum class HeaderFormat { v7, ustar, gnu, star };

// One header block decoded as Go does, before PAX records and GNU long names are applied.
struct RawHeader {
  char typeflag = 0;
  HeaderFormat format = HeaderFormat::v7;
  std::string name, link_name, uname, gname;
  int64_t size = 0, mode = 0, uid = 0, gid = 0, mtime = 0, dev_major = 0, dev_minor = 0;
  std::optional<int64_t> atime, ctime;
};

bool is_zero_block(const Block& block) {
  return std::all_of(block.begin(), block.end(), [](char c) { return c == 0; });
}

void verify_checksum(const Block& block, uint64_t offset) {
  auto stored = parse_octal(field_of(block, kChecksum));
  Checksums sums = compute_checksums(block.data());
  if (!stored || (*stored != sums.unsigned_sum && *stored != sums.signed_sum))
    fail("bad header checksum at offset " + std::to_string(offset) + " (not a tar archive, or corrupt)");
}

HeaderFormat detect_format(const Block& block) {
  std::string_view magic = field_of(block, kMagic);
  if (magic == kMagicUstar)
    return field_of(block, kStarTrailer) == kTrailerStar ? HeaderFormat::star : HeaderFormat::ustar;
  if (magic == kMagicGnu && field_of(block, kVersion) == kVersionGnu) return HeaderFormat::gnu;
  return HeaderFormat::v7;
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80 && c != 0; });
}

RawHeader decode_header(const Block& block, uint64_t offset) {
  verify_checksum(block, offset);
  auto number = [&](Field f, const char* what) {
    auto value = parse_numeric(field_of(block, f));
    if (!value) fail(std::string("invalid ") + what + " field in header at offset " + std::to_string(offset));
    return *value;
  };
  RawHeader h;
  h.format = detect_format(block);
  h.typeflag = block[kTypeflag.offset];
  h.name = parse_string(field_of(block, kName));
  h.link_name = parse_string(field_of(block, kLinkName));
  h.size = number(kSize, "size");
  h.mode = number(kMode, "mode");
  h.uid = number(kUid, "uid");
  h.gid = number(kGid, "gid");
  h.mtime = number(kMtime, "mtime");
  if (h.format == HeaderFormat::v7) return h;  // nothing past the link name in V7

  h.uname = parse_string(field_of(block, kUname));
  h.gname = parse_string(field_of(block, kGname));
  h.dev_major = number(kDevMajor, "devmajor");
  h.dev_minor = number(kDevMinor, "devminor");
  std::string prefix;
  switch (h.format) {
    case HeaderFormat::ustar:
      prefix = parse_string(field_of(block, kPrefix));
      break;
    case HeaderFormat::star:
      prefix = parse_string(field_of(block, kStarPrefix));
      h.atime = number(kStarAtime, "atime");
      h.ctime = number(kStarCtime, "ctime");
      break;
    case HeaderFormat::gnu: {
      // Times are optional here (first byte NUL = absent). Go before 1.8 wrote a ustar prefix
      // into these bytes by mistake; like Go, unparsable times mean "that was a prefix".
      auto atime_field = field_of(block, kGnuAtime), ctime_field = field_of(block, kGnuCtime);
      std::optional<int64_t> atime, ctime;
      bool ok = true;
      if (atime_field[0] != 0) ok = ok && (atime = parse_numeric(atime_field)).has_value();
      if (ctime_field[0] != 0) ok = ok && (ctime = parse_numeric(ctime_field)).has_value();
      if (ok) {
        h.atime = atime;
        h.ctime = ctime;
      } else if (std::string p = parse_string(field_of(block, kPrefix)); is_ascii(p)) {
        prefix = p;
      }
      break;
    }
    case HeaderFormat::v7:
      break;
  }
  if (!prefix.empty()) h.name = prefix + "/" + h.name;
  return h;
}

// --- PAX records ------------------------------------------------------------------------------

constexpr std::string_view kXattrPrefix = "SCHILY.xattr.";
constexpr std::string_view kGnuSparsePrefix = "GNU.sparse.";

using PaxRecords = std::map<std::string, std::string>;

bool is_string_field_key(std::string_view key) {
  return key == "path" || key == "linkpath" || key == "uname" || key == "gname";
}

// Records are "<length> <key>=<value>\n" where length counts the whole record. A later record
// replaces an earlier one with the same key.
PaxRecords parse_pax_records(std::string_view data) {
  PaxRecords pax;
  // PAX sparse format 0.0 repeats GNU.sparse.offset / GNU.sparse.numbytes pairs; like Go, they
  // are joined into the 0.1 form GNU.sparse.map.
  std::string sparse_00_map;
  size_t sparse_00_values = 0;
  while (!data.empty()) {
    size_t space = data.find(' ');
    if (space == std::string_view::npos || space == 0 || space > 19)
      fail("malformed PAX record: no length prefix");
    uint64_t length = 0;
    for (char c : data.substr(0, space)) {
      if (c < '0' || c > '9') fail("malformed PAX record: bad length prefix");
      length = length * 10 + static_cast<uint64_t>(c - '0');
    }
    if (length < 5 || length > data.size() || length <= space + 1)
      fail("malformed PAX record: length " + std::to_string(length) + " does not fit the header");
    std::string_view record = data.substr(space + 1, length - space - 1);
    if (record.back() != '\n') fail("malformed PAX record: missing newline");
    record.remove_suffix(1);
    size_t equals = record.find('=');
    if (equals == std::string_view::npos || equals == 0) fail("malformed PAX record: no key=value");
    std::string_view key = record.substr(0, equals), value = record.substr(equals + 1);
    if (key.find('\0') != std::string_view::npos) fail("malformed PAX record: NUL byte in key");
    if (is_string_field_key(key) && value.find('\0') != std::string_view::npos)
      fail("NUL byte in PAX " + std::string(key) + " value");
    data.remove_prefix(length);

    if (key == "GNU.sparse.offset" || key == "GNU.sparse.numbytes") {
      bool expect_offset = sparse_00_values % 2 == 0;
      if ((key == "GNU.sparse.offset") != expect_offset || value.find(',') != std::string_view::npos)
        fail("malformed PAX sparse 0.0 map");
      if (sparse_00_values++ > 0) sparse_00_map += ',';
      sparse_00_map += value;
    } else {
      pax[std::string(key)] = std::string(value);
    }
  }
  if (sparse_00_values > 0) pax["GNU.sparse.map"] = std::move(sparse_00_map);
  return pax;
}

// --- sparse files ---------------------------------------------------------------------------

struct Fragment {
  uint64_t offset = 0, length = 0;
  uint64_t end() const { return offset + length; }
};

// Checks a data-fragment map the way GNU, BSD and Go tar do, and that it accounts for exactly the
// bytes stored in the archive.
std::vector<Fragment> validate_sparse_map(const std::vector<std::pair<int64_t, int64_t>>& map, int64_t real_size,
                                          uint64_t stored, const std::string& name) {
  std::vector<Fragment> fragments;
  fragments.reserve(map.size());
  uint64_t previous_end = 0, data = 0;
  for (auto [offset, length] : map) {
    if (offset < 0 || length < 0 || offset > std::numeric_limits<int64_t>::max() - length)
      fail("negative or overflowing sparse map entry for " + quoted(name));
    Fragment f{static_cast<uint64_t>(offset), static_cast<uint64_t>(length)};
    if (f.end() > static_cast<uint64_t>(real_size))
      fail("sparse map of " + quoted(name) + " reaches beyond the real size " + std::to_string(real_size));
    if (f.offset < previous_end) fail("sparse map of " + quoted(name) + " is unsorted or overlapping");
    previous_end = f.end();
    data += f.length;
    fragments.push_back(f);
  }
  if (data != stored)
    fail("sparse map of " + quoted(name) + " describes " + std::to_string(data) + " data bytes but " +
         std::to_string(stored) + " are stored");
  return fragments;
}

// Parses "offset,length,offset,length..." (PAX sparse 0.0 after joining, and 0.1).
std::vector<std::pair<int64_t, int64_t>> parse_sparse_list(const std::vector<std::string_view>& tokens,
                                                           const std::string& name) {
  std::vector<std::pair<int64_t, int64_t>> map;
  for (size_t i = 0; i + 1 < tokens.size(); i += 2) {
    auto offset = parse_decimal(tokens[i]), length = parse_decimal(tokens[i + 1]);
    if (!offset || !length) fail("malformed sparse map of " + quoted(name));
    map.emplace_back(*offset, *length);
  }
  return map;
}

std::vector<std::string_view> split(std::string_view s, char separator) {
  std::vector<std::string_view> parts;
  if (s.empty()) return parts;
  for (;;) {
    size_t at = s.find(separator);
    parts.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return parts;
    s.remove_prefix(at + 1);
  }
}

enum class PaxSparse { none, v0, v1 };

PaxSparse pax_sparse_version(const std::map<std::string, std::string>& records, const std::string& name) {
  auto get = [&](const char* key) {
    auto it = records.find(key);
    return it == records.end() ? std::string() : it->second;
  };
  std::string major = get("GNU.sparse.major"), minor = get("GNU.sparse.minor");
  if (major == "0" && (minor == "0" || minor == "1")) return PaxSparse::v0;
  if (major == "1" && minor == "0") return PaxSparse::v1;
  if (!major.empty() || !minor.empty())
    fail("unsupported GNU sparse format " + quoted(major + "." + minor) + " for " + quoted(name));
  if (!get("GNU.sparse.map").empty()) return PaxSparse::v0;  // 0.0 and 0.1 carry no version
  return PaxSparse::none;
}

bool has_dotdot_component(std::string_view path) {
  for (std::string_view part : split(path, '/'))
    if (part == "..") return true;
  return false;
}

std::optional<EntryType> entry_type_for(char typeflag) {
  switch (typeflag) {
    case '0':
    case kTypeRegularOld:
    case kTypeContiguous:
    case kTypeGnuSparse:
      return EntryType::regular;
    case '1': return EntryType::hardlink;
    case '2': return EntryType::symlink;
    case '3': return EntryType::char_device;
    case '4': return EntryType::block_device;
    case '5': return EntryType::directory;
    case '6': return EntryType::fifo;
    default: return std::nullopt;
  }
}

std::string describe_typeflag(char typeflag) {
  if (typeflag >= 0x20 && typeflag < 0x7f) return std::string("'") + typeflag + "'";
  return "0x" + std::to_string(static_cast<unsigned char>(typeflag));
}

// Meta headers seen since the last entry; they describe the next real entry.
struct PendingMeta {
  std::optional<PaxRecords> pax;
  std::string long_name, long_link;
  bool any = false;
};

}  // namespace

// --- the reader -------------------------------------------------------------------------------

struct TarReader::Impl {
  explicit Impl(ByteSource& source, TarLimits limits) : input(source), limits(limits) {}

  BufferedInput input;
  TarLimits limits;

  // The current entry's content: `stored_left` bytes still in the archive, then `padding`.
  bool in_entry = false;
  std::string entry_name;  // for error messages
  uint64_t stored_left = 0;
  uint64_t padding = 0;
  // Sparse entries: data fragments of the expanded file, and where reading stands in it.
  bool sparse = false;
  std::vector<Fragment> fragments;
  size_t fragment_index = 0;
  uint64_t logical_position = 0, logical_size = 0;

  uint64_t entries = 0;
  uint64_t total_bytes = 0;
  bool finished = false;
  bool failed = false;

  // Bytes from the current position certainly in the archive.
  uint64_t lookahead() const { return stored_left + padding + kSafeLookahead; }

  bool next(TarEntry& out);
  size_t read(char* out, size_t size);

 private:
  void skip_rest_of_entry();
  bool read_header_block(Block& block, bool after_meta);
  std::string read_meta_content(const RawHeader& h, const char* what);
  void start_content(uint64_t stored);
  void read_stored(char* out, size_t size, const char* what);
  void build_entry(const RawHeader& h, Block& block, PendingMeta& meta, TarEntry& e);
  void apply_pax(const std::map<std::string, std::string>& records, TarEntry& e, int64_t& size);
  std::vector<std::pair<int64_t, int64_t>> read_old_gnu_sparse_map(Block& block);
  std::vector<std::pair<int64_t, int64_t>> read_pax_sparse_map_v1();
  size_t read_plain(char* out, size_t size);
  size_t read_sparse(char* out, size_t size);
};

void TarReader::Impl::skip_rest_of_entry() {
  if (!in_entry) return;
  uint64_t want = stored_left + padding;
  if (input.skip(want, want + kSafeLookahead) != want)
    fail("truncated archive: EOF inside the content or padding of " + quoted(entry_name));
  stored_left = padding = 0;
  in_entry = sparse = false;
  fragments.clear();
}

// Reads the next header block. Returns false at the end of the archive: EOF at a block boundary,
// a zero block then EOF, or two zero blocks (all consumed).
bool TarReader::Impl::read_header_block(Block& block, bool after_meta) {
  uint64_t offset = input.consumed();
  size_t n = input.read_full(block.data(), kBlockSize, kSafeLookahead);
  if (n == 0 && !after_meta) return false;
  if (n < kBlockSize)
    fail("truncated archive: EOF inside the header at offset " + std::to_string(offset) +
         (after_meta ? " (an extended header has no entry)" : ""));
  if (!is_zero_block(block)) return true;
  if (after_meta) fail("extended header at the end of the archive has no entry");
  Block second;
  n = input.read_full(second.data(), kBlockSize, kBlockSize);
  if (n == 0) return false;
  if (n < kBlockSize) fail("truncated archive: EOF inside the end-of-archive marker");
  if (!is_zero_block(second))
    fail("zero block followed by a non-zero block at offset " + std::to_string(offset + kBlockSize));
  return false;
}

void TarReader::Impl::start_content(uint64_t stored) {
  in_entry = true;
  stored_left = stored;
  padding = padding_after(stored);
}

void TarReader::Impl::read_stored(char* out, size_t size, const char* what) {
  if (size > stored_left) fail(std::string(what) + " of " + quoted(entry_name) + " is larger than its entry");
  if (input.read_full(out, size, lookahead()) != size)
    fail(std::string("truncated archive: EOF inside ") + what + " of " + quoted(entry_name));
  stored_left -= size;
}

// Content of a PAX or GNU long-name header, bounded by the header limit.
std::string TarReader::Impl::read_meta_content(const RawHeader& h, const char* what) {
  if (h.size < 0) fail(std::string("negative size in ") + what);
  if (static_cast<uint64_t>(h.size) > limits.max_header_bytes)
    fail(std::string(what) + " of " + std::to_string(h.size) + " bytes exceeds the limit of " +
         std::to_string(limits.max_header_bytes));
  entry_name = h.name;
  start_content(static_cast<uint64_t>(h.size));
  std::string data(static_cast<size_t>(h.size), '\0');
  read_stored(data.data(), data.size(), what);
  skip_rest_of_entry();
  return data;
}

bool TarReader::Impl::next(TarEntry& out) {
  skip_rest_of_entry();
  PendingMeta meta;
  for (;;) {
    uint64_t offset = input.consumed();
    Block block;
    if (!read_header_block(block, meta.any)) {
      finished = true;
      return false;
    }
    RawHeader h = decode_header(block, offset);
    switch (h.typeflag) {
      case kTypePaxLocal:
        meta.pax = parse_pax_records(read_meta_content(h, "PAX extended header"));
        meta.any = true;
        continue;
      case kTypePaxGlobal:
        fail("PAX global header ('g') at offset " + std::to_string(offset) + " is not supported");
      case kTypeGnuLongName:
        meta.long_name = parse_string(read_meta_content(h, "GNU long name"));
        meta.any = true;
        continue;
      case kTypeGnuLongLink:
        meta.long_link = parse_string(read_meta_content(h, "GNU long link name"));
        meta.any = true;
        continue;
      default:
        break;
    }
    TarEntry e;
    build_entry(h, block, meta, e);
    if (++entries > limits.max_entries)
      fail("archive has more than " + std::to_string(limits.max_entries) + " entries");
    out = std::move(e);
    return true;
  }
}

void TarReader::Impl::apply_pax(const std::map<std::string, std::string>& records, TarEntry& e, int64_t& size) {
  auto number = [&](const std::string& key, const std::string& value) {
    auto n = parse_decimal(value);
    if (!n || *n < 0) fail("invalid PAX " + key + " value " + quoted(value.substr(0, 40)));
    return *n;
  };
  auto time = [&](const std::string& key, const std::string& value) {
    auto t = parse_pax_time(value);
    if (!t) fail("invalid PAX " + key + " value " + quoted(value.substr(0, 40)));
    return *t;
  };
  for (const auto& [key, value] : records) {
    if (key.starts_with(kXattrPrefix)) {
      e.xattrs[key.substr(kXattrPrefix.size())] = value;  // raw bytes, may be empty
      continue;
    }
    if (key.starts_with(kGnuSparsePrefix)) continue;  // encoding details, used by the sparse code
    bool known = key == "path" || key == "linkpath" || key == "uname" || key == "gname" || key == "uid" ||
                 key == "gid" || key == "size" || key == "mtime" || key == "atime" || key == "ctime";
    if (!known) {
      e.other_pax[key] = value;
      continue;
    }
    if (value.empty()) continue;  // an empty record keeps the header's value (as Go does)
    if (key == "path") e.name = value;
    else if (key == "linkpath") e.link_name = value;
    else if (key == "uname") e.uname = value;
    else if (key == "gname") e.gname = value;
    else if (key == "uid") e.uid = static_cast<uint64_t>(number(key, value));
    else if (key == "gid") e.gid = static_cast<uint64_t>(number(key, value));
    else if (key == "size") size = number(key, value);
    else if (key == "mtime") e.mtime = time(key, value);
    else if (key == "atime") e.atime = time(key, value);
    else if (key == "ctime") e.ctime = time(key, value);
  }
}

void TarReader::Impl::build_entry(const RawHeader& h, Block& block, PendingMeta& meta, TarEntry& e) {
  auto non_negative = [&](int64_t v, const char* what, uint64_t max) {
    if (v < 0 || static_cast<uint64_t>(v) > max)
      fail(std::string("invalid ") + what + " " + std::to_string(v) + " for " + quoted(h.name));
    return static_cast<uint64_t>(v);
  };
  e.name = h.name;
  e.link_name = h.link_name;
  e.mode = static_cast<uint32_t>(non_negative(h.mode, "mode", std::numeric_limits<uint32_t>::max()));
  e.uid = non_negative(h.uid, "uid", std::numeric_limits<int64_t>::max());
  e.gid = non_negative(h.gid, "gid", std::numeric_limits<int64_t>::max());
  e.uname = h.uname;
  e.gname = h.gname;
  e.mtime = TarTime{h.mtime, 0};
  if (h.atime) e.atime = TarTime{*h.atime, 0};
  if (h.ctime) e.ctime = TarTime{*h.ctime, 0};
  e.dev_major = static_cast<uint32_t>(non_negative(h.dev_major, "devmajor", std::numeric_limits<uint32_t>::max()));
  e.dev_minor = static_cast<uint32_t>(non_negative(h.dev_minor, "devminor", std::numeric_limits<uint32_t>::max()));

  // Same precedence as Go: PAX records, then GNU long names, then the sparse file's own name.
  int64_t size = h.size;
  if (meta.pax) apply_pax(*meta.pax, e, size);
  if (!meta.long_name.empty()) e.name = meta.long_name;
  if (!meta.long_link.empty()) e.link_name = meta.long_link;

  auto type = entry_type_for(h.typeflag);
  if (!type) fail("unsupported entry type " + describe_typeflag(h.typeflag) + " for " + quoted(e.name));
  e.type = *type;
  if (h.typeflag == kTypeRegularOld && e.name.ends_with('/')) e.type = EntryType::directory;
  bool has_content = e.type == EntryType::regular;
  if (size < 0) fail("negative size for " + quoted(e.name));
  entry_name = e.name;

  // Header-only types have no content whatever their size field says (as in Go).
  uint64_t stored = has_content ? static_cast<uint64_t>(size) : 0;
  if (stored > limits.max_entry_bytes)
    fail("entry " + quoted(e.name) + " of " + std::to_string(stored) + " bytes exceeds the limit");
  start_content(stored);

  // Sparse files: the expanded size and the data fragments.
  std::vector<std::pair<int64_t, int64_t>> map;
  int64_t real_size = size;
  bool is_sparse = false;
  if (h.typeflag == kTypeGnuSparse) {
    if (h.format != HeaderFormat::gnu) fail("GNU sparse entry " + quoted(e.name) + " without a GNU header");
    auto real = parse_numeric(field_of(block, kGnuRealSize));
    if (!real) fail("invalid real size for sparse file " + quoted(e.name));
    real_size = *real;
    map = read_old_gnu_sparse_map(block);
    is_sparse = true;
  } else if (meta.pax) {
    const PaxRecords& records = *meta.pax;
    PaxSparse version = pax_sparse_version(records, e.name);
    if (version != PaxSparse::none) {
      if (!has_content) fail("sparse map on a non-regular entry " + quoted(e.name));
      is_sparse = true;
      if (auto it = records.find("GNU.sparse.name"); it != records.end() && !it->second.empty()) {
        e.name = it->second;
        entry_name = e.name;
      }
      auto it = records.find("GNU.sparse.size");
      if (it == records.end() || it->second.empty()) it = records.find("GNU.sparse.realsize");
      if (it != records.end() && !it->second.empty()) {
        auto n = parse_decimal(it->second);
        if (!n) fail("invalid real size for sparse file " + quoted(e.name));
        real_size = *n;
      }
      if (version == PaxSparse::v1) {
        map = read_pax_sparse_map_v1();
      } else {
        auto list = records.find("GNU.sparse.map");
        auto tokens = split(list == records.end() ? std::string_view{} : std::string_view(list->second), ',');
        auto blocks = records.find("GNU.sparse.numblocks");
        auto count = blocks == records.end() ? std::nullopt : parse_decimal(blocks->second);
        if (!count || *count < 0 || static_cast<uint64_t>(*count) != tokens.size() / 2 || tokens.size() % 2)
          fail("sparse map of " + quoted(e.name) + " does not match GNU.sparse.numblocks");
        map = parse_sparse_list(tokens, e.name);
      }
    }
  }
  if (is_sparse) {
    if (real_size < 0) fail("negative real size for sparse file " + quoted(e.name));
    fragments = validate_sparse_map(map, real_size, stored_left, e.name);
    if (static_cast<uint64_t>(real_size) > limits.max_entry_bytes)
      fail("sparse file " + quoted(e.name) + " of " + std::to_string(real_size) + " bytes exceeds the limit");
    sparse = true;
    fragment_index = 0;
    logical_position = 0;
    logical_size = static_cast<uint64_t>(real_size);
    e.size = logical_size;
  } else {
    e.size = stored;
  }

  if (e.name.find('\0') != std::string::npos || e.link_name.find('\0') != std::string::npos)
    fail("NUL byte in the name of " + quoted(e.name));
  if (has_dotdot_component(e.name)) fail("unsafe entry name " + quoted(e.name) + " (has a '..' component)");
  if (e.type == EntryType::hardlink && has_dotdot_component(e.link_name))
    fail("unsafe hardlink target " + quoted(e.link_name) + " of " + quoted(e.name) + " (has a '..' component)");

  total_bytes += e.size;
  if (total_bytes > limits.max_total_bytes)
    fail("archive content exceeds the limit of " + std::to_string(limits.max_total_bytes) + " bytes");
}

// Old GNU sparse map: up to 4 entries in the header, then extension blocks of 21 entries each
// (between the header and the data, not counted in the size field) while the "extended" flag is set.
std::vector<std::pair<int64_t, int64_t>> TarReader::Impl::read_old_gnu_sparse_map(Block& block) {
  std::vector<std::pair<int64_t, int64_t>> map;
  size_t entries_offset = kGnuSparseOffset, entry_count = kGnuSparseEntries, extended_at = kGnuIsExtended;
  uint64_t extension_bytes = 0;
  for (;;) {
    for (size_t i = 0; i < entry_count; ++i) {
      const char* entry = block.data() + entries_offset + i * kSparseEntrySize;
      if (entry[0] == 0) break;  // same terminator as GNU and BSD tar
      auto offset = parse_numeric({entry, 12}), length = parse_numeric({entry + 12, 12});
      if (!offset || !length) fail("invalid sparse map entry for " + quoted(entry_name));
      map.emplace_back(*offset, *length);
    }
    if (block[extended_at] == 0) return map;
    extension_bytes += kBlockSize;
    if (extension_bytes > limits.max_header_bytes) fail("sparse map of " + quoted(entry_name) + " is too large");
    if (input.read_full(block.data(), kBlockSize, kBlockSize + lookahead()) != kBlockSize)
      fail("truncated archive: EOF inside the sparse map of " + quoted(entry_name));
    entries_offset = 0;
    entry_count = kExtSparseEntries;
    extended_at = kExtIsExtended;
  }
}

// PAX sparse 1.0: the map starts the entry's data, as newline-terminated decimals (count, then
// offset/length pairs), padded to a block boundary.
std::vector<std::pair<int64_t, int64_t>> TarReader::Impl::read_pax_sparse_map_v1() {
  std::string text;
  size_t newlines = 0;
  auto read_until_newlines = [&](uint64_t wanted) {
    while (newlines < wanted) {
      if (text.size() + kBlockSize > limits.max_header_bytes)
        fail("sparse map of " + quoted(entry_name) + " is too large");
      if (stored_left < kBlockSize) fail("sparse map of " + quoted(entry_name) + " runs past its data");
      size_t at = text.size();
      text.resize(at + kBlockSize);
      read_stored(text.data() + at, kBlockSize, "sparse map");
      newlines += static_cast<size_t>(std::count(text.begin() + at, text.end(), '\n'));
    }
  };
  read_until_newlines(1);
  std::string_view rest = text;
  auto next_token = [&] {
    size_t at = rest.find('\n');
    std::string_view token = rest.substr(0, at);
    rest.remove_prefix(at + 1);
    return token;
  };
  auto count = parse_decimal(next_token());
  if (!count || *count < 0 || static_cast<uint64_t>(*count) > limits.max_header_bytes)
    fail("invalid sparse map entry count for " + quoted(entry_name));
  size_t consumed = text.size() - rest.size();
  read_until_newlines(1 + 2 * static_cast<uint64_t>(*count));
  rest = std::string_view(text).substr(consumed);
  std::vector<std::string_view> tokens;
  for (int64_t i = 0; i < 2 * *count; ++i) tokens.push_back(next_token());
  return parse_sparse_list(tokens, entry_name);
}

size_t TarReader::Impl::read_plain(char* out, size_t size) {
  size_t want = static_cast<size_t>(std::min<uint64_t>(size, stored_left));
  if (want == 0) return 0;
  size_t n = input.read_some(out, want, lookahead());
  if (n == 0) fail("truncated archive: EOF inside the content of " + quoted(entry_name));
  stored_left -= n;
  return n;
}

// Walks the fragments: holes are zero-filled, data comes from the archive.
size_t TarReader::Impl::read_sparse(char* out, size_t size) {
  size_t want = static_cast<size_t>(std::min<uint64_t>(size, logical_size - logical_position));
  size_t done = 0;
  while (done < want) {
    while (fragment_index < fragments.size() && logical_position >= fragments[fragment_index].end())
      ++fragment_index;
    size_t n;
    if (fragment_index < fragments.size() && logical_position >= fragments[fragment_index].offset) {
      uint64_t in_fragment = fragments[fragment_index].end() - logical_position;
      n = read_plain(out + done, static_cast<size_t>(std::min<uint64_t>(want - done, in_fragment)));
      if (n == 0) fail("sparse data of " + quoted(entry_name) + " is missing");  // map was validated; defensive
    } else {
      uint64_t hole_end = fragment_index < fragments.size() ? fragments[fragment_index].offset : logical_size;
      n = static_cast<size_t>(std::min<uint64_t>(want - done, hole_end - logical_position));
      std::memset(out + done, 0, n);
    }
    done += n;
    logical_position += n;
  }
  return done;
}

size_t TarReader::Impl::read(char* out, size_t size) {
  if (!in_entry) return 0;
  return sparse ? read_sparse(out, size) : read_plain(out, size);
}

// --- public API -------------------------------------------------------------------------------

TarReader::TarReader(ByteSource& source, TarLimits limits) : impl_(std::make_unique<Impl>(source, limits)) {}
TarReader::~TarReader() = default;

bool TarReader::next(TarEntry& entry) {
  if (impl_->failed) fail("reader used after an error");
  if (impl_->finished) return false;
  try {
    return impl_->next(entry);
  } catch (...) {
    impl_->failed = true;
    throw;
  }
}

size_t TarReader::read(void* out, size_t size) {
  if (impl_->failed) fail("reader used after an error");
  try {
    return impl_->read(static_cast<char*>(out), size);
  } catch (...) {
    impl_->failed = true;
    throw;
  }
}

uint64_t TarReader::bytes_consumed() const { return impl_->input.consumed(); }

}  // namespace accel::convert
