// Tar writer (see tar.hpp). Headers are encoded as Go's archive/tar Writer encodes a Header whose
// Format is FormatPAX, which for a header that needs nothing special is identical to what it
// writes for FormatUnknown:
//   - a plain ustar block when every field fits (names over 100 bytes split into prefix/name);
//   - otherwise a PAX 'x' header named "<dir>/PaxHeaders.0/<base>" with the records sorted by key,
//     then a ustar block with the fields truncated (non-ASCII dropped, numbers that do not fit 0).
// FormatPAX rather than FormatUnknown because FormatUnknown drops atime/ctime and rounds the mtime
// to whole seconds, which would lose what the reader gave us: here a sub-second mtime, an atime
// or a ctime produce PAX records, so an entry read back equals the one written.
// One deliberate difference: a mode or device number too large for its octal field is written in
// base-256 in the same header (Go would switch the whole entry to the GNU format, or fail when
// PAX records are needed too). Linux device numbers and modes always fit, so this does not occur
// for real layers.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>

#include "convert/tar.hpp"
#include "convert/tar_format.hpp"

namespace accel::convert {
namespace {

using namespace tar_format;
using Block = std::array<char, kBlockSize>;

constexpr size_t kMaxPaxHeaderBytes = 1 << 20;  // Go refuses larger extended headers
constexpr std::string_view kXattrPrefix = "SCHILY.xattr.";

[[noreturn]] void fail(const std::string& message) { throw ConvertError("tar writer: " + message); }

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80 && c != 0; });
}

// Drops the bytes a ustar field cannot hold (non-ASCII and NUL), like Go's toASCII.
std::string to_ascii(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x80 && c != 0) out += c;
  return out;
}

bool fits_octal(size_t field_size, uint64_t value) { return value <= max_octal(field_size); }

char* field_at(Block& block, Field f) { return block.data() + f.offset; }

// Copies `s` into the field (NUL-terminated when shorter). When a too-long value is cut right
// after a '/', the trailing slashes are blanked so buggy readers do not take a file for a
// directory (Go does the same).
void put_string(Block& block, Field f, std::string_view s) {
  if (s.empty()) return;  // the block starts zeroed
  char* out = field_at(block, f);
  std::memcpy(out, s.data(), std::min(s.size(), f.size));
  if (s.size() > f.size && out[f.size - 1] == '/') {
    size_t n = f.size;
    while (n > 0 && out[n - 1] == '/') --n;
    out[n] = 0;
  }
}

// Zero-padded octal with a NUL terminator; 0 when it does not fit (a PAX record carries it).
void put_octal(Block& block, Field f, uint64_t value) {
  if (!fits_octal(f.size, value)) value = 0;
  char digits[32];
  size_t width = f.size - 1, n = 0;
  for (uint64_t v = value; n == 0 || v != 0; v >>= 3) digits[n++] = static_cast<char>('0' + (v & 7));
  std::string text(width > n ? width - n : 0, '0');
  for (size_t i = n; i > 0; --i) text += digits[i - 1];
  put_string(block, f, text);
}

// Octal when it fits, otherwise GNU base-256 (big-endian with the top bit set).
void put_numeric(Block& block, Field f, uint64_t value) {
  if (fits_octal(f.size, value)) return put_octal(block, f, value);
  char* out = field_at(block, f);
  for (size_t i = f.size; i > 0; --i, value >>= 8) out[i - 1] = static_cast<char>(value & 0xff);
  out[0] = static_cast<char>(static_cast<unsigned char>(out[0]) | 0x80);
}

// Sets the ustar magic and the checksum ("%06o\0 " of the unsigned byte sum).
void finish_block(Block& block) {
  std::memcpy(field_at(block, kMagic), kMagicUstar.data(), kMagic.size);
  std::memcpy(field_at(block, kVersion), kVersionUstar.data(), kVersion.size);
  Checksums sums = compute_checksums(block.data());
  put_octal(block, Field{kChecksum.offset, 7}, static_cast<uint64_t>(sums.unsigned_sum));
  block[kChecksum.offset + 7] = ' ';
}

// --- Go path helpers (for the PAX header's name) -----------------------------------------------

// Lexical clean as Go's path.Clean: no "//", no "." elements, ".." resolved where possible.
// `out` is written through `w` like Go's lazybuf, so backing up can look at removed bytes.
std::string clean_path(std::string_view path) {
  if (path.empty()) return ".";
  std::string out;
  size_t w = 0;
  auto append = [&](char c) {
    if (w < out.size()) out[w] = c;
    else out.push_back(c);
    ++w;
  };
  const bool rooted = path[0] == '/';
  const size_t n = path.size();
  size_t r = 0, dotdot = 0;  // dotdot: where ".." can no longer back up
  if (rooted) {
    append('/');
    r = dotdot = 1;
  }
  while (r < n) {
    if (path[r] == '/') {
      ++r;
    } else if (path[r] == '.' && (r + 1 == n || path[r + 1] == '/')) {
      ++r;
    } else if (path[r] == '.' && path[r + 1] == '.' && (r + 2 == n || path[r + 2] == '/')) {
      r += 2;
      if (w > dotdot) {
        --w;
        while (w > dotdot && out[w] != '/') --w;
      } else if (!rooted) {
        if (w > 0) append('/');
        append('.');
        append('.');
        dotdot = w;
      }
    } else {
      if ((rooted && w != 1) || (!rooted && w != 0)) append('/');
      for (; r < n && path[r] != '/'; ++r) append(path[r]);
    }
  }
  if (w == 0) return ".";
  return out.substr(0, w);
}

// Go's path.Join(dir, "PaxHeaders.0", file) for path.Split(name): the extended header is named
// after the entry so tools that do not know PAX extract it next to it.
std::string pax_header_name(std::string_view name) {
  size_t slash = name.rfind('/');
  std::string_view dir = slash == std::string_view::npos ? std::string_view{} : name.substr(0, slash + 1);
  std::string_view file = slash == std::string_view::npos ? name : name.substr(slash + 1);
  std::string joined;
  for (std::string_view part : {dir, std::string_view("PaxHeaders.0"), file}) {
    if (part.empty()) continue;
    if (!joined.empty()) joined += '/';
    joined += part;
  }
  std::string result = to_ascii(clean_path(joined));
  if (result.size() > kName.size) result.resize(kName.size);
  while (!result.empty() && result.back() == '/') result.pop_back();
  return result;
}

// A name over 100 bytes stored as prefix (<= 155) + '/' + name (<= 100), as Go splits it.
struct UstarSplit {
  std::string_view prefix, name;
};
std::optional<UstarSplit> split_ustar_path(std::string_view name) {
  if (name.size() <= kName.size || !is_ascii(name)) return std::nullopt;
  size_t length = name.size();
  if (length > kPrefix.size + 1) length = kPrefix.size + 1;
  else if (name[length - 1] == '/') --length;
  size_t slash = name.substr(0, length).rfind('/');
  if (slash == std::string_view::npos || slash == 0) return std::nullopt;
  size_t name_length = name.size() - slash - 1;
  if (name_length > kName.size || name_length == 0 || slash > kPrefix.size) return std::nullopt;
  return UstarSplit{name.substr(0, slash), name.substr(slash + 1)};
}

// PAX time "%d.%09d" without trailing zeros, whole seconds alone; negative values count down
// from the epoch ("-1.5" for seconds=-2, nanoseconds=500000000).
std::string format_pax_time(TarTime t) {
  if (t.nanoseconds == 0) return std::to_string(t.seconds);
  std::string sign;
  uint64_t seconds;
  uint32_t nanos = t.nanoseconds;
  if (t.seconds < 0) {
    sign = "-";
    seconds = static_cast<uint64_t>(-(t.seconds + 1));
    nanos = 1'000'000'000 - nanos;
  } else {
    seconds = static_cast<uint64_t>(t.seconds);
  }
  char fraction[16];
  std::snprintf(fraction, sizeof fraction, "%09u", nanos);
  std::string text = sign + std::to_string(seconds) + "." + fraction;
  while (text.back() == '0') text.pop_back();
  return text;
}

// "<length> <key>=<value>\n" where length includes its own digits.
std::string format_pax_record(const std::string& key, const std::string& value) {
  size_t size = key.size() + value.size() + 3;  // ' ', '=', '\n'
  size += std::to_string(size).size();
  std::string record = std::to_string(size) + " " + key + "=" + value + "\n";
  if (record.size() != size) record = std::to_string(record.size()) + " " + key + "=" + value + "\n";
  return record;
}

bool is_basic_key(std::string_view key) {
  return key == "path" || key == "linkpath" || key == "size" || key == "uid" || key == "gid" || key == "uname" ||
         key == "gname" || key == "mtime" || key == "atime" || key == "ctime";
}

void validate_pax_record(const std::string& key, const std::string& value) {
  if (key.empty() || key.find('=') != std::string::npos || key.find('\0') != std::string::npos)
    fail("invalid PAX record key '" + key + "'");
  bool string_field = key == "path" || key == "linkpath" || key == "uname" || key == "gname";
  if (string_field && value.find('\0') != std::string::npos) fail("NUL byte in " + key);
}

// What Go's Header.allowedFormats works out: the records a PAX header would carry, and whether a
// plain ustar header can hold the entry instead.
struct HeaderPlan {
  std::map<std::string, std::string> pax;
  bool ustar_fits = true;   // every field fits a ustar header
  bool prefer_pax = false;  // ustar would lose precision (sub-second or out-of-range times)
  bool only_pax = false;    // xattrs or other PAX records
};

class Planner {
 public:
  explicit Planner(const TarEntry& e) : entry_(e) {}

  HeaderPlan plan(uint64_t size) {
    string_field(entry_.name, kName.size, "path");
    string_field(entry_.link_name, kLinkName.size, "linkpath");
    string_field(entry_.uname, kUname.size, "uname");
    string_field(entry_.gname, kGname.size, "gname");
    number_field(entry_.uid, kUid.size, "uid");
    number_field(entry_.gid, kGid.size, "gid");
    number_field(size, kSize.size, "size");
    mtime_field(entry_.mtime);
    if (entry_.atime) other_time_field(*entry_.atime, "atime");
    if (entry_.ctime) other_time_field(*entry_.ctime, "ctime");

    for (const auto& [name, value] : entry_.xattrs) plan_.pax[std::string(kXattrPrefix) + name] = value;
    if (!entry_.xattrs.empty()) plan_.only_pax = true;
    // Records derived from fields win; GNU sparse records would make readers misread the data.
    for (const auto& [key, value] : entry_.other_pax) {
      if (plan_.pax.count(key) || is_basic_key(key) || key.starts_with("GNU.sparse.")) continue;
      plan_.pax[key] = value;
    }
    if (!entry_.other_pax.empty()) plan_.only_pax = true;
    for (const auto& [key, value] : plan_.pax) validate_pax_record(key, value);
    return std::move(plan_);
  }

 private:
  // A basic key also present in other_pax with the field's exact value is kept (as Go keeps
  // PAXRecords that agree with the header).
  void keep_if_listed(const char* key, const std::string& value) {
    auto it = entry_.other_pax.find(key);
    if (it != entry_.other_pax.end() && it->second == value) plan_.pax[key] = value;
  }

  void string_field(const std::string& value, size_t field_size, const char* key) {
    if (!is_ascii(value) || value.size() > field_size) {
      bool splits = std::string_view(key) == "path" && split_ustar_path(value);
      if (!splits) plan_.ustar_fits = false;
      plan_.pax[key] = value;
    }
    keep_if_listed(key, value);
  }

  void number_field(uint64_t value, size_t field_size, const char* key) {
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(std::string(key) + " " + std::to_string(value) + " is too large");
    if (!fits_octal(field_size, value)) {
      plan_.ustar_fits = false;
      plan_.pax[key] = std::to_string(value);
    }
    keep_if_listed(key, std::to_string(value));
  }

  void mtime_field(TarTime t) {
    bool fits = t.seconds >= 0 && fits_octal(kMtime.size, static_cast<uint64_t>(t.seconds));
    if (!fits) plan_.ustar_fits = false;
    if (!fits || t.nanoseconds != 0) {
      plan_.prefer_pax = true;
      plan_.pax["mtime"] = format_pax_time(t);
    }
    keep_if_listed("mtime", format_pax_time(t));
  }

  // ustar has no atime/ctime at all.
  void other_time_field(TarTime t, const char* key) {
    plan_.ustar_fits = false;
    plan_.prefer_pax = true;
    plan_.pax[key] = format_pax_time(t);
  }

  const TarEntry& entry_;
  HeaderPlan plan_;
};

uint64_t content_size(const TarEntry& e) { return e.type == EntryType::regular ? e.size : 0; }

// Fields common to the ustar block of both header kinds (Go's templateV7Plus).
Block main_block(const TarEntry& e, std::string_view name, std::string_view link_name, std::string_view uname,
                 std::string_view gname) {
  Block block{};
  block[kTypeflag.offset] = static_cast<char>(e.type);
  put_string(block, kName, name);
  put_string(block, kLinkName, link_name);
  put_numeric(block, kMode, e.mode);
  put_octal(block, kUid, e.uid);
  put_octal(block, kGid, e.gid);
  put_octal(block, kSize, content_size(e));
  put_octal(block, kMtime, e.mtime.seconds >= 0 ? static_cast<uint64_t>(e.mtime.seconds) : 0);
  put_string(block, kUname, uname);
  put_string(block, kGname, gname);
  put_numeric(block, kDevMajor, e.dev_major);
  put_numeric(block, kDevMinor, e.dev_minor);
  return block;
}

void append_block(std::string& out, const Block& block) { out.append(block.data(), block.size()); }

std::string encode_ustar(const TarEntry& e) {
  std::string_view name = e.name, prefix;
  if (auto split = split_ustar_path(e.name)) {
    prefix = split->prefix;
    name = split->name;
  }
  Block block = main_block(e, name, e.link_name, e.uname, e.gname);
  put_string(block, kPrefix, prefix);
  finish_block(block);
  std::string out;
  append_block(out, block);
  return out;
}

std::string encode_pax(const TarEntry& e, const std::map<std::string, std::string>& records) {
  std::string out;
  if (!records.empty()) {
    std::string data;
    for (const auto& [key, value] : records) data += format_pax_record(key, value);
    if (data.size() > kMaxPaxHeaderBytes) fail("PAX header of " + std::to_string(data.size()) + " bytes is too large");
    // Go's writeRawFile: only name, type, size and zeros for mode, ids and mtime.
    Block header{};
    header[kTypeflag.offset] = kTypePaxLocal;
    put_string(header, kName, pax_header_name(e.name));
    put_octal(header, kMode, 0);
    put_octal(header, kUid, 0);
    put_octal(header, kGid, 0);
    put_octal(header, kSize, data.size());
    put_octal(header, kMtime, 0);
    finish_block(header);
    append_block(out, header);
    out += data;
    out.append(padding_after(data.size()), '\0');
  }
  Block block = main_block(e, to_ascii(e.name), to_ascii(e.link_name), to_ascii(e.uname), to_ascii(e.gname));
  finish_block(block);
  append_block(out, block);
  return out;
}

}  // namespace

std::string TarWriter::encode_header(const TarEntry& entry) {
  bool needs_plain_name = entry.type == EntryType::regular || entry.type == EntryType::char_device ||
                          entry.type == EntryType::block_device || entry.type == EntryType::fifo;
  if (needs_plain_name && entry.name.ends_with('/'))
    fail("name '" + entry.name + "' of a non-directory ends with '/'");
  uint64_t size = content_size(entry);
  HeaderPlan plan = Planner(entry).plan(size);
  if (plan.ustar_fits && !plan.prefer_pax && !plan.only_pax) return encode_ustar(entry);
  return encode_pax(entry, plan.pax);
}

TarWriter::TarWriter(ByteSink& sink) : sink_(sink) {}

void TarWriter::write_header(const TarEntry& entry) {
  pad();
  std::string header = encode_header(entry);
  sink_.write(header.data(), header.size());
  written_ += header.size();
  content_left_ = content_total_ = content_size(entry);
}

void TarWriter::write_content(const void* data, size_t size) {
  if (size > content_left_)
    fail("content longer than the entry's size (" + std::to_string(size) + " bytes written, " +
         std::to_string(content_left_) + " left)");
  sink_.write(data, size);
  content_left_ -= size;
  written_ += size;
}

// Idempotent: after padding, content_total_ is reset so a second call writes nothing.
void TarWriter::pad() {
  if (content_left_ > 0) fail(std::to_string(content_left_) + " content bytes of the entry were not written");
  static constexpr char kZeros[kBlockSize] = {};
  size_t padding = static_cast<size_t>(padding_after(content_total_));
  if (padding > 0) {
    sink_.write(kZeros, padding);
    written_ += padding;
  }
  content_total_ = 0;
}

void TarWriter::finish() {
  pad();
  static constexpr char kZeros[2 * kBlockSize] = {};
  sink_.write(kZeros, sizeof kZeros);
  written_ += sizeof kZeros;
}

}  // namespace accel::convert
