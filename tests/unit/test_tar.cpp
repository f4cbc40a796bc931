// Tar reader and writer: archives made by GNU tar at test time (every format, sparse files,
// devices, xattrs, extreme times), hand-crafted malformed archives, writer round trips, and the
// writer's header bytes against what Go's archive/tar writes (tests/unit/data/tar_golden.txt).
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "convert/tar.hpp"
#include "convert/streams.hpp"
#include "convert/tar_format.hpp"

using namespace accel::convert;
namespace fs = std::filesystem;

namespace {

// --- plumbing -----------------------------------------------------------------------------------

// Serves a string, at most `max_chunk` bytes per read (to exercise partial reads).
class StringSource : public ByteSource {
 public:
  explicit StringSource(std::string data, size_t max_chunk = std::numeric_limits<size_t>::max())
      : data_(std::move(data)), max_chunk_(max_chunk) {}
  size_t read(void* out, size_t size) override {
    size_t n = std::min({size, max_chunk_, data_.size() - position_});
    std::memcpy(out, data_.data() + position_, n);
    position_ += n;
    return n;
  }
  size_t position() const { return position_; }

 private:
  std::string data_;
  size_t max_chunk_;
  size_t position_ = 0;
};

struct Item {
  TarEntry entry;
  std::string content;
};

std::vector<Item> read_items(TarReader& reader, size_t read_size = 8192) {
  std::vector<Item> items;
  TarEntry entry;
  std::vector<char> buffer(read_size);
  while (reader.next(entry)) {
    Item item{entry, {}};
    while (size_t n = reader.read(buffer.data(), buffer.size())) item.content.append(buffer.data(), n);
    REQUIRE(item.content.size() == entry.size);
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<Item> read_all(const std::string& archive, TarLimits limits = {},
                           size_t chunk = std::numeric_limits<size_t>::max(), size_t read_size = 8192) {
  StringSource source(archive, chunk);
  TarReader reader(source, limits);
  auto items = read_items(reader, read_size);
  CHECK(reader.bytes_consumed() == source.position());
  return items;
}

const Item& find(const std::vector<Item>& items, const std::string& name) {
  for (const auto& item : items)
    if (item.entry.name == name) return item;
  FAIL("no entry named " << name);
  throw std::logic_error("unreachable");
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  REQUIRE(out);
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "accel-tar-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a bash script in `dir`; output goes to the test log only on failure.
void sh(const fs::path& dir, const std::string& script) {
  fs::path log = dir / "sh.log";
  std::string command = "cd " + shell_quote(dir.string()) + " && bash -euo pipefail -c " + shell_quote(script) +
                        " >" + shell_quote(log.string()) + " 2>&1";
  int rc = std::system(command.c_str());
  INFO("script: " << script << "\noutput: " << read_file(log));
  REQUIRE(rc == 0);
}

std::string shell_output(const fs::path& dir, const std::string& script) {
  fs::path out = dir / "sh.out";
  sh(dir, "(" + script + ") > " + shell_quote(out.string()));
  return read_file(out);
}

// --- hand-crafted archives ----------------------------------------------------------------------

std::string octal(uint64_t value, size_t width) {
  std::string digits;
  do {
    digits.insert(digits.begin(), static_cast<char>('0' + (value & 7)));
    value >>= 3;
  } while (value);
  return std::string(width > digits.size() ? width - digits.size() : 0, '0') + digits;
}

void set_field(std::string& block, tar_format::Field f, const std::string& value) {
  REQUIRE(value.size() <= f.size);
  std::fill(block.begin() + f.offset, block.begin() + f.offset + f.size, '\0');
  std::copy(value.begin(), value.end(), block.begin() + f.offset);
}

void set_checksum(std::string& block) {
  auto sums = tar_format::compute_checksums(block.data());
  set_field(block, tar_format::kChecksum, octal(sums.unsigned_sum, 6) + std::string("\0 ", 2));
}

enum class Magic { ustar, gnu, v7 };

// One header block; `tweak` edits raw fields before the checksum is set.
std::string header(const std::string& name, char type, uint64_t size, Magic magic = Magic::ustar,
                    const std::function<void(std::string&)>& tweak = {}) {
  using namespace tar_format;
  std::string block(kBlockSize, '\0');
  set_field(block, kName, name);
  set_field(block, kMode, "0000644");
  set_field(block, kUid, "0001750");
  set_field(block, kGid, "0001750");
  set_field(block, kSize, octal(size, 11));
  set_field(block, kMtime, octal(1600000000, 11));
  block[kTypeflag.offset] = type;
  if (magic == Magic::ustar) {
    set_field(block, kMagic, std::string(kMagicUstar));
    set_field(block, kVersion, std::string(kVersionUstar));
  } else if (magic == Magic::gnu) {
    set_field(block, kMagic, std::string(kMagicGnu));
    set_field(block, kVersion, std::string(kVersionGnu));
  }
  if (magic != Magic::v7) {
    set_field(block, kUname, "user");
    set_field(block, kGname, "group");
  }
  if (tweak) tweak(block);
  set_checksum(block);
  return block;
}

std::string padded(const std::string& data) {
  return data + std::string(tar_format::padding_after(data.size()), '\0');
}

std::string file(const std::string& name, const std::string& content, char type = '0', Magic magic = Magic::ustar) {
  return header(name, type, content.size(), magic) + padded(content);
}

std::string pax_record(const std::string& key, const std::string& value) {
  size_t size = key.size() + value.size() + 3;
  size += std::to_string(size).size();
  std::string record = std::to_string(size) + " " + key + "=" + value + "\n";
  if (record.size() != size) record = std::to_string(record.size()) + " " + key + "=" + value + "\n";
  return record;
}

std::string pax(const std::string& records, char type = 'x') {
  return header("PaxHeaders.0/x", type, records.size()) + padded(records);
}

const std::string kEnd(1024, '\0');

// Base-256 field: two's complement big-endian with the top bit set.
std::string base256(int64_t value, size_t width) {
  std::string out(width, '\0');
  for (size_t i = width; i > 0; --i, value >>= 8) out[i - 1] = static_cast<char>(value & 0xff);  // sign-extends
  out[0] = static_cast<char>(static_cast<unsigned char>(out[0]) | 0x80);
  return out;
}

void check_rejected(const std::string& archive, const std::string& message, TarLimits limits = {}) {
  INFO("expected error containing: " << message);
  CHECK_THROWS_WITH(read_all(archive, limits), Catch::Contains(message));
}

void check_same(const TarEntry& a, const TarEntry& b) {
  INFO("entry " << a.name);
  CHECK(a.name == b.name);
  CHECK(a.type == b.type);
  CHECK(a.link_name == b.link_name);
  CHECK(a.mode == b.mode);
  CHECK(a.uid == b.uid);
  CHECK(a.gid == b.gid);
  CHECK(a.uname == b.uname);
  CHECK(a.gname == b.gname);
  CHECK(a.mtime == b.mtime);
  CHECK(a.atime == b.atime);
  CHECK(a.ctime == b.ctime);
  CHECK(a.dev_major == b.dev_major);
  CHECK(a.dev_minor == b.dev_minor);
  CHECK(a.size == b.size);
  CHECK(a.xattrs == b.xattrs);
  CHECK(a.other_pax == b.other_pax);
}

// Writes items with TarWriter.
std::string write_items(const std::vector<Item>& items) {
  StringSink sink;
  TarWriter writer(sink);
  for (const auto& item : items) {
    writer.write_header(item.entry);
    // In uneven pieces, to check the writer does not care.
    for (size_t at = 0; at < item.content.size();) {
      size_t n = std::min<size_t>(item.content.size() - at, 1 + at % 7919);
      writer.write_content(item.content.data() + at, n);
      at += n;
    }
    writer.pad();
  }
  writer.finish();
  CHECK(writer.bytes_written() == sink.data.size());
  return sink.data;
}

void check_round_trip(const std::vector<Item>& items) {
  std::string archive = write_items(items);
  auto back = read_all(archive);
  REQUIRE(back.size() == items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    check_same(back[i].entry, items[i].entry);
    CHECK(back[i].content == items[i].content);
  }
}

// --- a tree of files exercising every entry kind, archived by GNU tar ---------------------------

const std::string kLong1 = "long-" + std::string(90, 'a') + "/file-" + std::string(40, 'b');  // 141: ustar split
const std::string kLong2Dirs = std::string(100, 'x') + "/" + std::string(100, 'y');
const std::string kLong2 = kLong2Dirs + "/" + std::string(60, 'z');  // 262: needs PAX or GNU 'L'
const std::string kUnicode = "ünïcødé-文件.txt";
constexpr int64_t kFixedMtime = 1600000000;

struct Tree {
  bool xattrs = false;  // user xattrs could be set on this file system
};

// Creates <dir>/src. `full`: also names, times and xattrs that only PAX and GNU can store.
Tree make_tree(const fs::path& dir, bool full) {
  std::string script = R"(
    mkdir src && cd src
    printf 'hello world\n' > hello.txt
    : > empty
    mkdir -p dir/sub sticky ")" + kLong1.substr(0, kLong1.find('/')) + R"("
    python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 7 + i // 251) % 256 for i in range(200000)))' > dir/sub/data.bin
    chmod 600 dir/sub/data.bin
    printf 'long one\n' > ")" + kLong1 + R"("
    printf 'unicode\n' > ")" + kUnicode + R"("
    ln -s hello.txt link-to-hello
    ln hello.txt zz-hardlink
    mknod chr c 1 3
    mknod blk b 8 1
    mkfifo fifo
    printf '#!/bin/sh\n' > setuid-bin && chmod 4755 setuid-bin
    printf '#!/bin/sh\n' > setgid-bin && chmod 2750 setgid-bin
    chmod 1777 sticky
    : > .wh.deleted
    : > dir/.wh..wh..opq
    touch y2100 nano
  )";
  if (full) {
    script += R"(
    mkdir -p ")" + kLong2Dirs + R"("
    printf 'very long\n' > ")" + kLong2 + R"("
    touch old-1960 neg-frac y2286 xattr-file
    ln -s ")" + kLong1 + R"(" long-link
    )";
  }
  script += R"(
    find . -exec touch -h -d @1600000000 {} +
    touch -d @4102444800 y2100
    touch -d @1700000000.123456789 nano
  )";
  if (full) script += "touch -d @-315619200 old-1960; touch -d @-1.5 neg-frac; touch -d @10000000000 y2286\n";
  sh(dir, script);

  Tree tree;
  if (full) {
    std::string path = (dir / "src" / "xattr-file").string();
    std::string value("va\0l\xff", 5);
    tree.xattrs = setxattr(path.c_str(), "user.test", value.data(), value.size(), 0) == 0 &&
                  setxattr(path.c_str(), "user.empty", "", 0, 0) == 0;
    if (!tree.xattrs) WARN("file system has no user xattrs; xattrs are covered by hand-crafted PAX records only");
  }
  return tree;
}

// GNU tar over the tree's top-level names (so names carry no "./").
std::string gnu_tar(const fs::path& dir, const std::string& options) {
  sh(dir, "cd src && tar " + options + " --sort=name --owner=alice:1234 --group=staff:5678 -cf ../out.tar -- $(ls -A)");
  return read_file(dir / "out.tar");
}

// Checks every field of the tree's entries. `posix`: sub-second times, atime/ctime present.
void check_tree(const std::vector<Item>& items, const fs::path& src, bool posix, bool full) {
  for (const auto& item : items) {
    const TarEntry& e = item.entry;
    INFO("entry " << e.name);
    CHECK(e.uid == 1234);
    CHECK(e.gid == 5678);
    CHECK(e.uname == "alice");
    CHECK(e.gname == "staff");
    CHECK(e.atime.has_value() == posix);
    CHECK(e.ctime.has_value() == posix);
    CHECK(e.name.find("./") == std::string::npos);
    CHECK(e.name.find("PaxHeaders") == std::string::npos);
    CHECK(e.name.find("GNUSparseFile") == std::string::npos);
    if (e.type == EntryType::regular) {
      CHECK(item.content == read_file(src / e.name));
    } else {
      CHECK(item.content.empty());
      CHECK(e.size == 0);
    }
    if (e.type == EntryType::directory) CHECK(e.name.ends_with("/"));
    bool special_time = e.name == "y2100" || e.name == "nano" || e.name == "old-1960" || e.name == "neg-frac" ||
                        e.name == "y2286";
    if (!special_time) CHECK(e.mtime == TarTime{kFixedMtime, 0});
    CHECK(e.other_pax.count("GNU.sparse.name") == 0);
  }

  auto regular = [&](const std::string& name, uint32_t mode, uint64_t size) {
    INFO("entry " << name);
    const TarEntry& e = find(items, name).entry;
    CHECK(e.type == EntryType::regular);
    CHECK(e.mode == mode);
    CHECK(e.size == size);
  };
  regular("hello.txt", 0644, 12);
  regular("empty", 0644, 0);
  regular("dir/sub/data.bin", 0600, 200000);
  regular(kLong1, 0644, 9);
  regular(kUnicode, 0644, 8);
  regular("setuid-bin", 04755, 10);
  regular("setgid-bin", 02750, 10);
  regular(".wh.deleted", 0644, 0);  // whiteouts are plain files
  regular("dir/.wh..wh..opq", 0644, 0);

  CHECK(find(items, "dir/").entry.type == EntryType::directory);
  CHECK(find(items, "dir/sub/").entry.mode == 0755);
  CHECK(find(items, "sticky/").entry.mode == 01777);
  CHECK(find(items, "long-" + std::string(90, 'a') + "/").entry.type == EntryType::directory);

  const TarEntry& symlink = find(items, "link-to-hello").entry;
  CHECK(symlink.type == EntryType::symlink);
  CHECK(symlink.link_name == "hello.txt");
  CHECK(symlink.mode == 0777);
  const TarEntry& hardlink = find(items, "zz-hardlink").entry;
  CHECK(hardlink.type == EntryType::hardlink);
  CHECK(hardlink.link_name == "hello.txt");

  const TarEntry& chr = find(items, "chr").entry;
  CHECK(chr.type == EntryType::char_device);
  CHECK(chr.dev_major == 1);
  CHECK(chr.dev_minor == 3);
  const TarEntry& blk = find(items, "blk").entry;
  CHECK(blk.type == EntryType::block_device);
  CHECK(blk.dev_major == 8);
  CHECK(blk.dev_minor == 1);
  CHECK(find(items, "fifo").entry.type == EntryType::fifo);

  CHECK(find(items, "y2100").entry.mtime == TarTime{4102444800, 0});
  CHECK(find(items, "nano").entry.mtime == TarTime{1700000000, posix ? 123456789u : 0u});
  if (full) {
    regular(kLong2, 0644, 10);
    CHECK(find(items, kLong2Dirs + "/").entry.type == EntryType::directory);
    CHECK(find(items, "old-1960").entry.mtime == TarTime{-315619200, 0});
    // -1.5 s: whole seconds round down, nanoseconds count up from there.
    CHECK(find(items, "neg-frac").entry.mtime == (posix ? TarTime{-2, 500000000} : TarTime{-2, 0}));
    CHECK(find(items, "y2286").entry.mtime == TarTime{10000000000, 0});
    const TarEntry& long_link = find(items, "long-link").entry;
    CHECK(long_link.type == EntryType::symlink);
    CHECK(long_link.link_name == kLong1);  // over 100 bytes: PAX linkpath or GNU 'K'
  }
}

}  // namespace

// === GNU tar archives ============================================================================

TEST_CASE("tar: GNU tar --format=posix, every entry kind and field", "[tar]") {
  TempDir dir;
  Tree tree = make_tree(dir.path, true);
  std::string archive = gnu_tar(dir.path, "--format=posix --xattrs --xattrs-include='*'");
  auto items = read_all(archive);
  check_tree(items, dir.path / "src", true, true);
  CHECK(items.size() == 28);
  if (tree.xattrs) {
    const TarEntry& e = find(items, "xattr-file").entry;
    CHECK(e.xattrs.size() == 2);
    CHECK(e.xattrs.at("user.test") == std::string("va\0l\xff", 5));
    CHECK(e.xattrs.at("user.empty").empty());
  }
  // atime and ctime are the files' real ones; only check they are plausible.
  CHECK(find(items, "hello.txt").entry.ctime->seconds > 1600000000);
}

TEST_CASE("tar: GNU tar --format=gnu (long names, base-256 times)", "[tar]") {
  TempDir dir;
  make_tree(dir.path, true);
  std::string archive = gnu_tar(dir.path, "--format=gnu");
  // GNU tar stores the 1960 and 2286 times in base-256 and the long names as 'L' / 'K' records.
  CHECK(archive.find("././@LongLink") != std::string::npos);
  auto items = read_all(archive);
  check_tree(items, dir.path / "src", false, true);
}

TEST_CASE("tar: GNU tar --format=ustar (prefix split) and --format=v7", "[tar]") {
  TempDir dir;
  make_tree(dir.path, false);
  auto items = read_all(gnu_tar(dir.path, "--format=ustar"));
  check_tree(items, dir.path / "src", false, false);

  sh(dir.path, "cd src && tar --format=v7 -cf ../v7.tar hello.txt dir link-to-hello empty");
  auto v7 = read_all(read_file(dir.path / "v7.tar"));
  CHECK(find(v7, "hello.txt").content == "hello world\n");
  CHECK(find(v7, "hello.txt").entry.mode == 0644);
  CHECK(find(v7, "hello.txt").entry.uname.empty());  // V7 has no user names
  CHECK(find(v7, "dir/").entry.type == EntryType::directory);
  CHECK(find(v7, "dir/sub/data.bin").content.size() == 200000);
  CHECK(find(v7, "link-to-hello").entry.type == EntryType::symlink);
  CHECK(find(v7, "link-to-hello").entry.link_name == "hello.txt");
}

TEST_CASE("tar: sparse files from GNU tar are expanded", "[tar]") {
  TempDir dir;
  sh(dir.path, R"(
    mkdir src && cd src
    # data in the middle, unaligned, and a trailing hole
    truncate -s 8M holes
    printf 'A%.0s' $(seq 4096) | dd of=holes bs=1 seek=0 conv=notrunc status=none
    printf 'B%.0s' $(seq 5000) | dd of=holes bs=1 seek=1048576 conv=notrunc status=none
    printf 'tail-data' | dd of=holes bs=1 seek=5243000 conv=notrunc status=none
    # 30 data regions: more than fit in the old GNU header (4) and one extension block (21)
    truncate -s 4M many
    for i in $(seq 0 29); do printf "region-$i" | dd of=many bs=4096 seek=$((i * 32)) conv=notrunc status=none; done
    # data up to the very end
    truncate -s 1M tail
    printf 'end' | dd of=tail bs=1 seek=$((1048576 - 3)) conv=notrunc status=none
    # nothing but a hole
    truncate -s 3M empty-sparse
  )");
  const std::vector<std::string> names = {"empty-sparse", "holes", "many", "tail"};
  struct Variant {
    const char* options;
    const char* marker;  // proves the archive really is in that sparse format
  };
  for (auto variant : {Variant{"--format=gnu", nullptr}, Variant{"--format=posix --sparse-version=0.0", "GNU.sparse.offset"},
                       Variant{"--format=posix --sparse-version=0.1", "GNU.sparse.map"},
                       Variant{"--format=posix --sparse-version=1.0", "GNU.sparse.major=1"}}) {
    INFO(variant.options);
    std::string archive = gnu_tar(dir.path, std::string("--sparse ") + variant.options);
    CHECK(archive.size() < 200 * 1024);  // holes were not stored
    if (variant.marker) CHECK(archive.find(variant.marker) != std::string::npos);
    if (!variant.marker) CHECK(archive[156] == 'S');  // old GNU sparse type flag on the first entry
    for (size_t read_size : {size_t{1000}, size_t{65536}, size_t{1} << 20}) {
      auto items = read_all(archive, {}, std::numeric_limits<size_t>::max(), read_size);
      REQUIRE(items.size() == names.size());
      for (size_t i = 0; i < names.size(); ++i) {
        INFO(names[i]);
        const auto& item = items[i];
        CHECK(item.entry.name == names[i]);
        CHECK(item.entry.type == EntryType::regular);
        std::string expected = read_file(dir.path / "src" / names[i]);
        CHECK(item.entry.size == expected.size());
        CHECK(item.content == expected);  // byte for byte, holes as zeros
        CHECK(item.entry.mode == 0644);
        CHECK(item.entry.uid == 1234);
        for (const auto& [key, value] : item.entry.other_pax) CHECK_FALSE(key.starts_with("GNU.sparse"));
      }
    }
  }
}

TEST_CASE("tar: content reads are the same whatever the source's and the caller's chunk sizes", "[tar]") {
  TempDir dir;
  make_tree(dir.path, true);
  sh(dir.path, "truncate -s 2M src/sparse && printf x | dd of=src/sparse bs=1 seek=1000000 conv=notrunc status=none");
  std::string archive = gnu_tar(dir.path, "--format=posix --sparse");
  auto expected = read_all(archive);
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{511}, size_t{512}, size_t{4096}, size_t{100000}}) {
    for (size_t read_size : {size_t{1}, size_t{7}, size_t{512}, size_t{70000}}) {
      if (chunk == 1 && read_size < 512) continue;  // slow and adds nothing
      INFO("chunk " << chunk << " read " << read_size);
      auto items = read_all(archive, {}, chunk, read_size);
      REQUIRE(items.size() == expected.size());
      for (size_t i = 0; i < items.size(); ++i) {
        check_same(items[i].entry, expected[i].entry);
        CHECK(items[i].content == expected[i].content);
      }
    }
  }
}

TEST_CASE("tar: entries can be skipped without reading their content", "[tar]") {
  TempDir dir;
  make_tree(dir.path, false);
  sh(dir.path, "truncate -s 2M src/sparse && printf x | dd of=src/sparse bs=1 seek=1000000 conv=notrunc status=none");
  std::string archive = gnu_tar(dir.path, "--format=gnu --sparse");
  StringSource source(archive + "trailing bytes that are not ours");
  TarReader reader(source);
  TarEntry entry;
  std::vector<std::string> names;
  char byte;
  while (reader.next(entry)) {
    names.push_back(entry.name);
    if (entry.name == "hello.txt") {  // partly read
      REQUIRE(reader.read(&byte, 1) == 1);
      CHECK(byte == 'h');
    }
  }
  CHECK(names.size() == 21);
  CHECK(std::find(names.begin(), names.end(), "sparse") != names.end());
  // GNU tar pads archives to 10 KiB records: the zeros after the end marker are not read.
  CHECK(reader.bytes_consumed() == source.position());
  CHECK(archive.size() - reader.bytes_consumed() < 10240);
  CHECK(archive.substr(reader.bytes_consumed() - 1024).find_first_not_of('\0') == std::string::npos);
  CHECK_FALSE(reader.next(entry));  // stays at the end
  CHECK(reader.read(&byte, 1) == 0);
}

// === end of archive and bytes_consumed ============================================================

TEST_CASE("tar: end of archive forms and bytes_consumed", "[tar]") {
  std::string body = file("a", "hello") + file("b", std::string(70000, 'x'));
  std::string trailer = "TRAILING DATA";

  SECTION("two zero blocks; what follows stays in the source") {
    for (size_t chunk : {size_t{1}, size_t{512}, size_t{100000}}) {
      StringSource source(body + kEnd + trailer, chunk);
      TarReader reader(source);
      auto items = read_items(reader);
      CHECK(items.size() == 2);
      CHECK(reader.bytes_consumed() == body.size() + 1024);
      CHECK(source.position() == body.size() + 1024);
      std::string rest;
      char c;
      while (source.read(&c, 1) == 1) rest += c;
      CHECK(rest == trailer);
    }
  }
  SECTION("tar's usual zero padding after the end marker is not consumed") {
    std::string archive = body + kEnd + std::string(8192, '\0');
    StringSource source(archive);
    TarReader reader(source);
    read_items(reader);
    CHECK(reader.bytes_consumed() == body.size() + 1024);
    CHECK(source.position() == body.size() + 1024);
  }
  SECTION("one zero block then EOF") {
    StringSource source(body + std::string(512, '\0'));
    TarReader reader(source);
    CHECK(read_items(reader).size() == 2);
    CHECK(reader.bytes_consumed() == body.size() + 512);
  }
  SECTION("clean EOF at a block boundary") {
    StringSource source(body);
    TarReader reader(source);
    CHECK(read_items(reader).size() == 2);
    CHECK(reader.bytes_consumed() == body.size());
  }
  SECTION("empty archive") {
    CHECK(read_all("").empty());
    CHECK(read_all(kEnd).empty());
  }
  SECTION("bytes_consumed counts the content read so far") {
    StringSource source(body + kEnd);
    TarReader reader(source);
    TarEntry entry;
    REQUIRE(reader.next(entry));
    CHECK(reader.bytes_consumed() == 512);
    char buffer[3];
    REQUIRE(reader.read(buffer, 3) == 3);
    CHECK(reader.bytes_consumed() == 515);
  }
}

// === hand-crafted features =======================================================================

TEST_CASE("tar: PAX records map to fields", "[tar]") {
  std::string records = pax_record("path", "dir/ünïcødé name that is long " + std::string(200, 'n')) +
                        pax_record("uid", "5000000000") + pax_record("gid", "42") + pax_record("uname", "ålice") +
                        pax_record("gname", "staff") + pax_record("mtime", "-1.5") +
                        pax_record("atime", "1700000000.1234567899") + pax_record("ctime", "1700000000") +
                        pax_record("SCHILY.xattr.user.bin", std::string("\0\x01\xff=\n", 5)) +
                        pax_record("SCHILY.xattr.security.capability", "cap") +
                        pax_record("comment", "kept as is") + pax_record("LIBARCHIVE.xattr.user.x", "eA==") +
                        pax_record("size", "600");
  std::string archive = pax(records) + header("short", '0', 0) + padded(std::string(600, 'c')) + kEnd;
  auto items = read_all(archive);
  REQUIRE(items.size() == 1);
  const TarEntry& e = items[0].entry;
  CHECK(e.name == "dir/ünïcødé name that is long " + std::string(200, 'n'));
  CHECK(e.uid == 5000000000u);
  CHECK(e.gid == 42);
  CHECK(e.uname == "ålice");
  CHECK(e.gname == "staff");
  CHECK(e.mtime == TarTime{-2, 500000000});
  CHECK(e.atime == TarTime{1700000000, 123456789});  // digits past nanoseconds dropped
  CHECK(e.ctime == TarTime{1700000000, 0});
  CHECK(e.xattrs.size() == 2);
  CHECK(e.xattrs.at("user.bin") == std::string("\0\x01\xff=\n", 5));
  CHECK(e.xattrs.at("security.capability") == "cap");
  CHECK(e.other_pax == std::map<std::string, std::string>{{"comment", "kept as is"}, {"LIBARCHIVE.xattr.user.x", "eA=="}});
  CHECK(e.size == 600);
  CHECK(items[0].content == std::string(600, 'c'));
}

TEST_CASE("tar: PAX details (empty values, linkpath, later headers win)", "[tar]") {
  // An empty value keeps the header's value.
  auto items = read_all(pax(pax_record("path", "") + pax_record("uname", "")) + file("from-header", "") + kEnd);
  CHECK(items.at(0).entry.name == "from-header");
  CHECK(items.at(0).entry.uname == "user");

  items = read_all(pax(pax_record("linkpath", std::string(150, 'l'))) + header("link", '2', 0) + kEnd);
  CHECK(items.at(0).entry.link_name == std::string(150, 'l'));

  // Only the last 'x' header before an entry counts (as in Go); records do not leak to the next.
  items = read_all(pax(pax_record("path", "first")) + pax(pax_record("gname", "g2")) + file("x", "") +
                   file("y", "") + kEnd);
  CHECK(items.at(0).entry.name == "x");
  CHECK(items.at(0).entry.gname == "g2");
  CHECK(items.at(1).entry.gname == "group");

  // Negative fractional times without whole seconds.
  items = read_all(pax(pax_record("mtime", "-0.25")) + file("t", "") + kEnd);
  CHECK(items.at(0).entry.mtime == TarTime{-1, 750000000});
}

TEST_CASE("tar: GNU long names and base-256 numbers", "[tar]") {
  std::string long_name = std::string(300, 'n');
  std::string long_link = std::string(200, 'k');
  std::string archive = header("././@LongLink", 'L', long_name.size() + 1, Magic::gnu) + padded(long_name + '\0') +
                        header("././@LongLink", 'K', long_link.size(), Magic::gnu) + padded(long_link) +
                        header("trunc", '1', 0, Magic::gnu) +
                        header("numbers", '0', 0, Magic::gnu, [](std::string& b) {
                          set_field(b, tar_format::kUid, base256(5000000, 8));
                          set_field(b, tar_format::kMtime, base256(-1000, 12));
                          set_field(b, tar_format::kSize, base256(3, 12));
                          set_field(b, tar_format::kGnuAtime, octal(1700000000, 11));
                        }) +
                        padded("abc") + kEnd;
  auto items = read_all(archive);
  REQUIRE(items.size() == 2);
  CHECK(items[0].entry.name == long_name);
  CHECK(items[0].entry.link_name == long_link);
  CHECK(items[0].entry.type == EntryType::hardlink);
  const TarEntry& e = items[1].entry;
  CHECK(e.uid == 5000000);
  CHECK(e.mtime == TarTime{-1000, 0});
  CHECK(e.atime == TarTime{1700000000, 0});  // GNU headers may carry atime
  CHECK_FALSE(e.ctime);
  CHECK(items[1].content == "abc");
}

TEST_CASE("tar: old and odd type flags", "[tar]") {
  std::string archive = file("old-regular", "data", '\0') + header("old-dir/", '\0', 0) +
                        file("contiguous", "cont", '7') + file("v7-file", "v7", '0', Magic::v7) +
                        header("prefixed", '0', 0, Magic::ustar, [](std::string& b) {
                          set_field(b, tar_format::kPrefix, "some/prefix");
                        }) +
                        kEnd;
  auto items = read_all(archive);
  REQUIRE(items.size() == 5);
  CHECK(items[0].entry.type == EntryType::regular);
  CHECK(items[0].content == "data");
  CHECK(items[1].entry.type == EntryType::directory);  // '\0' with a trailing slash
  CHECK(items[2].entry.type == EntryType::regular);    // contiguous file = regular
  CHECK(items[2].content == "cont");
  CHECK(items[3].content == "v7");
  CHECK(items[3].entry.uname.empty());  // not read from V7 headers
  CHECK(items[4].entry.name == "some/prefix/prefixed");
  // Header-only types have no content whatever the size field says (as in Go).
  items = read_all(header("d/", '5', 100) + file("after", "ok") + kEnd);
  CHECK(items.at(0).entry.size == 0);
  CHECK(items.at(1).content == "ok");
}

TEST_CASE("tar: checksum may be the signed byte sum", "[tar]") {
  std::string block = header("\xe9t\xe9", '0', 0);
  auto sums = tar_format::compute_checksums(block.data());
  REQUIRE(sums.signed_sum != sums.unsigned_sum);
  set_field(block, tar_format::kChecksum, octal(static_cast<uint64_t>(sums.signed_sum), 6) + std::string("\0 ", 2));
  CHECK(read_all(block + kEnd).at(0).entry.name == "\xe9t\xe9");
}

TEST_CASE("tar: PAX sparse 0.0 / 0.1 / 1.0 crafted by hand", "[tar]") {
  // 10-byte file "..ab....c." : data at 2 (2 bytes) and 8 (1 byte).
  const std::string expected = std::string("\0\0ab\0\0\0\0c\0", 10);
  std::string v00 = pax(pax_record("GNU.sparse.size", "10") + pax_record("GNU.sparse.numblocks", "2") +
                        pax_record("GNU.sparse.offset", "2") + pax_record("GNU.sparse.numbytes", "2") +
                        pax_record("GNU.sparse.offset", "8") + pax_record("GNU.sparse.numbytes", "1")) +
                    file("sparse", "abc") + kEnd;
  std::string v01 = pax(pax_record("GNU.sparse.major", "0") + pax_record("GNU.sparse.minor", "1") +
                        pax_record("GNU.sparse.name", "real/name") + pax_record("GNU.sparse.realsize", "10") +
                        pax_record("GNU.sparse.numblocks", "2") + pax_record("GNU.sparse.map", "2,2,8,1")) +
                    file("GNUSparseFile.0/name", "abc") + kEnd;
  std::string map = padded("2\n2\n2\n8\n1\n");
  std::string v10 = pax(pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0") +
                        pax_record("GNU.sparse.name", "real/name") + pax_record("GNU.sparse.realsize", "10")) +
                    file("GNUSparseFile.0/name", map + "abc") + kEnd;
  for (const auto& archive : {v00, v01, v10}) {
    auto items = read_all(archive);
    REQUIRE(items.size() == 1);
    CHECK(items[0].entry.size == 10);
    CHECK(items[0].content == expected);
    CHECK(items[0].entry.other_pax.empty());
  }
  CHECK(read_all(v01).at(0).entry.name == "real/name");
  CHECK(read_all(v00).at(0).entry.name == "sparse");
}

// === malformed archives ===========================================================================

TEST_CASE("tar: malformed headers are rejected", "[tar]") {
  std::string good = file("a", "hello") + kEnd;

  std::string bad_checksum = good;
  bad_checksum[0] = 'b';
  check_rejected(bad_checksum, "bad header checksum at offset 0");
  check_rejected(std::string(512, 'x'), "bad header checksum");

  check_rejected(good.substr(0, 300), "truncated archive: EOF inside the header at offset 0");
  check_rejected(file("a", "hello") + header("b", '0', 10000) + "short", "truncated archive: EOF inside the content of 'b'");
  check_rejected(header("a", '0', 5) + "hello", "truncated archive");  // EOF inside the padding
  check_rejected(file("a", "x") + std::string(512, '\0') + std::string(100, '\0'), "EOF inside the end-of-archive");
  check_rejected(file("a", "x") + std::string(512, '\0') + file("b", "y"), "zero block followed by a non-zero block");

  check_rejected(header("neg", '0', 0, Magic::gnu, [](std::string& b) { set_field(b, tar_format::kSize, base256(-5, 12)); }) + kEnd,
                 "negative size");
  check_rejected(header("huge", '0', 0, Magic::gnu,
                        [](std::string& b) { set_field(b, tar_format::kSize, std::string("\x80") + std::string(11, '\xff')); }) +
                     kEnd,
                 "invalid size field");
  check_rejected(header("bad", '0', 0, Magic::ustar, [](std::string& b) { set_field(b, tar_format::kSize, "12x4"); }) + kEnd,
                 "invalid size field");
  check_rejected(header("bad", '0', 0, Magic::gnu, [](std::string& b) { set_field(b, tar_format::kUid, base256(-1, 8)); }) + kEnd,
                 "invalid uid");
  check_rejected(file("vol", "", 'V') + kEnd, "unsupported entry type 'V'");
  check_rejected(file("dump", "", 'D') + kEnd, "unsupported entry type 'D'");
}

TEST_CASE("tar: unsafe names are rejected", "[tar]") {
  for (std::string name : {"../../etc/passwd", "a/../../b", "..", "a/..", "../", "./.."}) {
    INFO(name);
    check_rejected(file(name, "x") + kEnd, "unsafe entry name");
    check_rejected(pax(pax_record("path", name)) + file("ok", "") + kEnd, "unsafe entry name");
    check_rejected(header("././@LongLink", 'L', name.size(), Magic::gnu) + padded(name) + file("ok", "", '0', Magic::gnu) + kEnd,
                   "unsafe entry name");
    check_rejected(header("hl", '1', 0, Magic::ustar, [&](std::string& b) { set_field(b, tar_format::kLinkName, name); }) + kEnd,
                   "unsafe hardlink target");
  }
  // Fine: ".." only inside a component, and symlinks may point anywhere.
  auto items = read_all(file("a/..b/c..", "") +
                        header("sl", '2', 0, Magic::ustar, [](std::string& b) { set_field(b, tar_format::kLinkName, "../../lib"); }) +
                        kEnd);
  CHECK(items.at(0).entry.name == "a/..b/c..");
  CHECK(items.at(1).entry.link_name == "../../lib");
  check_rejected(pax(pax_record("path", std::string("a\0b", 3))) + file("ok", "") + kEnd, "NUL byte in PAX path value");
  check_rejected(pax(pax_record("linkpath", std::string("a\0b", 3))) + file("ok", "") + kEnd, "NUL byte in PAX linkpath");
  check_rejected(pax(pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0") +
                     pax_record("GNU.sparse.name", std::string("a\0b", 3))) +
                     file("s", padded("0\n")) + kEnd,
                 "NUL byte in the name");
}

TEST_CASE("tar: malformed PAX records are rejected", "[tar]") {
  auto with = [](const std::string& records) { return pax(records) + file("f", "") + kEnd; };
  check_rejected(with("abc path=x\n"), "bad length prefix");
  check_rejected(with("noprefix"), "no length prefix");
  check_rejected(with("99 path=x\n"), "does not fit");
  check_rejected(with("3 a\n"), "does not fit");
  check_rejected(with("13 path=xyz\n"), "does not fit");
  check_rejected(with("11 path=xyz"), "missing newline");
  check_rejected(with("11 pathxyz\n"), "no key=value");
  check_rejected(with("7 =xyz\n"), "no key=value");
  check_rejected(with(pax_record("path", "ok") + "garbage"), "malformed PAX record");
  check_rejected(with(pax_record("uid", "-1")), "invalid PAX uid");
  check_rejected(with(pax_record("size", "12abc")), "invalid PAX size");
  check_rejected(with(pax_record("mtime", "1.2.3")), "invalid PAX mtime");
  check_rejected(with(pax_record("mtime", "x")), "invalid PAX mtime");
  check_rejected(with(pax_record("GNU.sparse.numbytes", "1")), "malformed PAX sparse 0.0 map");
  check_rejected(pax(pax_record("comment", "x"), 'g') + file("f", "") + kEnd, "PAX global header ('g')");
  check_rejected(pax(pax_record("path", "x")), "has no entry");
  check_rejected(pax(pax_record("path", "x")) + kEnd, "has no entry");
}

TEST_CASE("tar: malformed sparse maps are rejected", "[tar]") {
  auto v01 = [](const std::string& map, const std::string& numblocks, const std::string& data,
                const std::string& realsize = "1000") {
    return pax(pax_record("GNU.sparse.major", "0") + pax_record("GNU.sparse.minor", "1") +
               pax_record("GNU.sparse.realsize", realsize) + pax_record("GNU.sparse.numblocks", numblocks) +
               pax_record("GNU.sparse.map", map)) +
           file("s", data) + kEnd;
  };
  CHECK(read_all(v01("0,5,100,5", "2", "0123456789")).at(0).entry.size == 1000);
  check_rejected(v01("100,5,0,5", "2", "0123456789"), "unsorted or overlapping");
  check_rejected(v01("0,10,5,5", "2", std::string(15, 'x')), "unsorted or overlapping");
  check_rejected(v01("0,5,998,5", "2", "0123456789"), "beyond the real size");
  check_rejected(v01("0,5,100,5", "2", "0123456789", "-1"), "negative real size");
  check_rejected(v01("0,5,100,5", "2", "0123456789x"), "describes 10 data bytes but 11 are stored");
  check_rejected(v01("0,5,100,5", "3", "0123456789"), "does not match GNU.sparse.numblocks");
  check_rejected(v01("0,5,100", "2", "0123456789"), "does not match GNU.sparse.numblocks");
  check_rejected(v01("0,5,x,5", "2", "0123456789"), "malformed sparse map");
  check_rejected(v01("-5,5,100,5", "2", "0123456789"), "negative or overflowing");
  check_rejected(pax(pax_record("GNU.sparse.major", "2") + pax_record("GNU.sparse.minor", "0")) + file("s", "") + kEnd,
                 "unsupported GNU sparse format '2.0'");

  auto v10 = [](const std::string& map_and_data) {
    return pax(pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0") +
               pax_record("GNU.sparse.realsize", "100")) +
           file("s", map_and_data) + kEnd;
  };
  CHECK(read_all(v10(padded("1\n0\n3\n") + "abc")).at(0).content == "abc" + std::string(97, '\0'));
  check_rejected(v10(padded("99999999999999\n")), "invalid sparse map entry count");
  check_rejected(v10(padded("x\n")), "invalid sparse map entry count");
  check_rejected(v10(std::string(600, '1')), "sparse map of 's' runs past its data");
  check_rejected(v10(padded("1\n50\n60\n") + std::string(60, 'x')), "beyond the real size");

  check_rejected(header("s", 'S', 0) + kEnd, "without a GNU header");
  // Old GNU sparse map claiming an extension block that is not there.
  check_rejected(header("s", 'S', 0, Magic::gnu, [](std::string& b) {
                   set_field(b, tar_format::kGnuRealSize, octal(10, 11));
                   b[tar_format::kGnuIsExtended] = 1;
                 }),
                 "EOF inside the sparse map");
}

TEST_CASE("tar: limits", "[tar]") {
  std::string three = file("a", "1") + file("b", "22") + file("c", "333") + kEnd;
  TarLimits limits;
  limits.max_entries = 2;
  check_rejected(three, "more than 2 entries", limits);
  limits = {};
  limits.max_total_bytes = 5;
  check_rejected(three, "archive content exceeds the limit of 5 bytes", limits);
  limits = {};
  limits.max_entry_bytes = 2;
  check_rejected(three, "entry 'c' of 3 bytes exceeds the limit", limits);
  limits = {};
  limits.max_header_bytes = 100;
  std::string big_record = pax_record("comment", std::string(200, 'c'));
  check_rejected(pax(big_record) + file("f", "") + kEnd,
                 "PAX extended header of " + std::to_string(big_record.size()) + " bytes exceeds the limit of 100", limits);
  check_rejected(header("././@LongLink", 'L', 200, Magic::gnu) + padded(std::string(200, 'n')) + kEnd,
                 "GNU long name of 200 bytes exceeds the limit", limits);
  // A sparse file counts with its expanded size.
  limits = {};
  limits.max_entry_bytes = 600;
  check_rejected(pax(pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0") +
                     pax_record("GNU.sparse.realsize", "1000000")) +
                     file("s", padded("0\n")) + kEnd,
                 "sparse file 's' of 1000000 bytes exceeds the limit", limits);
  // A reader that failed stays failed.
  StringSource source(file("a", "1") + std::string(512, 'x'));
  TarReader reader(source);
  TarEntry entry;
  REQUIRE(reader.next(entry));
  CHECK_THROWS_WITH(reader.next(entry), Catch::Contains("bad header checksum"));
  CHECK_THROWS_WITH(reader.next(entry), Catch::Contains("used after an error"));
}

// === writer ======================================================================================

namespace {

TarEntry entry(const std::string& name, EntryType type, uint32_t mode, int64_t mtime = 1700000000) {
  TarEntry e;
  e.name = name;
  e.type = type;
  e.mode = mode;
  e.mtime = TarTime{mtime, 0};
  return e;
}

// The same entries as tests/unit/data/tar_golden_gen.go.
std::map<std::string, TarEntry> golden_entries() {
  const std::string long150 = std::string(60, 'd') + "/" + std::string(50, 'e') + "/" + std::string(39, 'f');
  const std::string long300 = std::string(120, 'a') + "/" + std::string(120, 'b') + "/" + std::string(58, 'c');
  std::map<std::string, TarEntry> cases;
  auto add = [&](const std::string& name, TarEntry e) { cases[name] = std::move(e); };
  {
    auto e = entry("usr/bin/hello", EntryType::regular, 0755);
    e.uname = e.gname = "root";
    e.size = 1234;
    add("regular", e);
  }
  {
    auto e = entry("etc/", EntryType::directory, 0755, 1600000000);
    e.uid = e.gid = 1000;
    e.uname = "user";
    e.gname = "users";
    add("directory", e);
  }
  {
    auto e = entry("lib/libfoo.so", EntryType::symlink, 0777);
    e.link_name = "libfoo.so.1";
    add("symlink", e);
  }
  {
    auto e = entry("bin/b", EntryType::hardlink, 0644);
    e.link_name = "bin/a";
    add("hardlink", e);
  }
  {
    auto e = entry("dev/null", EntryType::char_device, 0666);
    e.dev_major = 1;
    e.dev_minor = 3;
    add("char_device", e);
  }
  {
    auto e = entry("dev/sda", EntryType::block_device, 0660);
    e.dev_major = 8;
    e.gid = 6;
    e.gname = "disk";
    add("block_device", e);
  }
  add("fifo", entry("run/fifo", EntryType::fifo, 0600));
  {
    auto e = entry("usr/bin/su", EntryType::regular, 04755);
    e.size = 10;
    add("setuid", e);
  }
  add("whiteout", entry("etc/.wh.passwd", EntryType::regular, 0));
  add("opaque_whiteout", entry("var/.wh..wh..opq", EntryType::regular, 0));
  add("epoch_zero", entry("zero", EntryType::regular, 0644, 0));
  add("mtime_2100", entry("future", EntryType::regular, 0644, 4102444800));
  {
    auto e = entry(long150, EntryType::regular, 0644);
    e.size = 5;
    add("long_name_split", e);
  }
  {
    auto e = entry(long300, EntryType::regular, 0644);
    e.size = 5;
    add("long_name_pax", e);
  }
  add("long_dir_pax", entry(long300 + "/", EntryType::directory, 0755));
  {
    auto e = entry("données/ñandú-文件.txt", EntryType::regular, 0644);
    e.size = 3;
    add("unicode_name", e);
  }
  {
    auto e = entry("link", EntryType::symlink, 0777);
    e.link_name = std::string(150, 't');
    add("long_link_target", e);
  }
  {
    auto e = entry("f", EntryType::regular, 0644);
    e.uname = std::string(40, 'u');
    e.gname = "g";
    add("long_uname", e);
  }
  {
    auto e = entry("f", EntryType::regular, 0644);
    e.uid = 3000000;
    e.gid = 4000000;
    add("big_uid", e);
  }
  {
    auto e = entry("big", EntryType::regular, 0644);
    e.size = uint64_t{10} << 30;
    add("big_size", e);
  }
  add("negative_mtime", entry("old", EntryType::regular, 0644, -1000000));
  add("mtime_beyond_octal", entry("far", EntryType::regular, 0644, 10000000000));
  {
    auto e = entry("usr/bin/ping", EntryType::regular, 0755);
    e.size = 7;
    e.xattrs["security.capability"] = std::string("\x01\x00\x00\x02\x00\x20", 6) + std::string(14, '\0');
    e.xattrs["user.comment"] = "hi=there";
    add("xattrs", e);
  }
  {
    auto e = entry("f", EntryType::regular, 0644);
    e.other_pax = {{"comment", "hello"}, {"LIBARCHIVE.creationtime", "1"}};
    add("other_pax", e);
  }
  {
    auto e = entry("nano", EntryType::regular, 0644);
    e.mtime.nanoseconds = 500;
    add("nano_mtime", e);
  }
  {
    auto e = entry("nano-old", EntryType::regular, 0644);
    e.mtime = TarTime{-2, 500000000};
    add("negative_nano_mtime", e);
  }
  {
    auto e = entry("times", EntryType::regular, 0644);
    e.atime = TarTime{1700000001, 250000000};
    e.ctime = TarTime{1700000002, 0};
    add("atime_ctime", e);
  }
  add("dot_slash_pax", entry("./a//b/./ü", EntryType::regular, 0644));
  return cases;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

// Content of `size` bytes that is not all one value.
std::string content_of(uint64_t size) {
  std::string s(size, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('a' + i % 23);
  return s;
}

}  // namespace

TEST_CASE("tar: writer headers are byte-identical to Go's archive/tar", "[tar]") {
  std::ifstream golden(std::string(ACCEL_SOURCE_DIR) + "/tests/unit/data/tar_golden.txt");
  REQUIRE(golden);
  auto cases = golden_entries();
  std::string name, hex;
  size_t compared = 0;
  while (golden >> name >> hex) {
    INFO("case " << name);
    REQUIRE(cases.count(name));
    std::string expected = from_hex(hex);
    std::string actual = TarWriter::encode_header(cases.at(name));
    CHECK(actual.size() == expected.size());
    if (actual != expected) {
      for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i)
        if (actual[i] != expected[i]) {
          FAIL_CHECK("first difference at byte " << i);
          break;
        }
    }
    ++compared;
  }
  CHECK(compared == cases.size());
}

TEST_CASE("tar: writer round trip", "[tar]") {
  std::vector<Item> items;
  for (auto& [name, e] : golden_entries()) {
    if (e.size > (1 << 20)) e.size = 70000;  // keep the big-size case small in memory
    items.push_back({e, content_of(e.type == EntryType::regular ? e.size : 0)});
  }
  // More that only PAX can carry.
  auto e = entry("pax/everything", EntryType::regular, 0644);
  e.uid = 1ull << 40;
  e.gname = "grøup";
  e.mtime = TarTime{-5000000000, 1};
  e.atime = TarTime{0, 999999999};
  e.ctime = TarTime{-1, 0};
  e.xattrs = {{"user.empty", ""}, {"user.bin", std::string("\0\n\xff", 3)}};
  e.other_pax = {{"comment", "c"}, {"charset", "ISO-IR 10646 2000 UTF-8"}};
  e.size = 513;
  items.push_back({e, content_of(513)});
  auto big_mode = entry("odd-mode", EntryType::char_device, 0100644);  // file type bits as some tools store
  big_mode.dev_major = 4095;
  big_mode.dev_minor = 1048575;
  items.push_back({big_mode, ""});
  auto huge_dev = entry("huge-dev", EntryType::block_device, 0600);  // base-256 device number
  huge_dev.dev_major = 3000000;
  items.push_back({huge_dev, ""});
  items.push_back({entry("", EntryType::regular, 0), ""});
  check_round_trip(items);
}

TEST_CASE("tar: writer output is readable by GNU tar and round-trips GNU tar archives", "[tar]") {
  TempDir dir;
  make_tree(dir.path, true);
  for (const char* format : {"--format=posix --xattrs --xattrs-include='*'", "--format=gnu"}) {
    INFO(format);
    std::string original = gnu_tar(dir.path, format);
    auto items = read_all(original);
    std::string rewritten = write_items(items);
    check_round_trip(items);
    write_file(dir.path / "rewritten.tar", rewritten);
    // GNU tar lists both archives the same way (names, modes, owners, sizes, times, links).
    std::string list = "tar --full-time --numeric-owner -tvf ";
    CHECK(shell_output(dir.path, list + "out.tar") == shell_output(dir.path, list + "rewritten.tar"));
    sh(dir.path, "rm -rf x && mkdir x && tar -C x -xf rewritten.tar && cmp x/dir/sub/data.bin src/dir/sub/data.bin && "
                 "cmp x/" + shell_quote(kUnicode) + " src/" + shell_quote(kUnicode) + " && test -p x/fifo && test -c x/chr");
  }
}

TEST_CASE("tar: writer errors and padding", "[tar]") {
  StringSink sink;
  TarWriter writer(sink);
  auto e = entry("f", EntryType::regular, 0644);
  e.size = 3;
  writer.write_header(e);
  CHECK(writer.bytes_written() == 512);
  CHECK_THROWS_WITH(writer.write_content("abcd", 4), Catch::Contains("content longer"));
  writer.write_content("ab", 2);
  CHECK_THROWS_WITH(writer.pad(), Catch::Contains("1 content bytes of the entry were not written"));
  writer.write_content("c", 1);
  writer.pad();
  writer.pad();  // idempotent
  CHECK(writer.bytes_written() == 1024);
  auto d = entry("d", EntryType::directory, 0755);
  d.size = 99;  // ignored: directories have no content
  writer.write_header(d);
  writer.finish();
  CHECK(writer.bytes_written() == 2560);
  auto items = read_all(sink.data);
  REQUIRE(items.size() == 2);
  CHECK(items[0].content == "abc");
  CHECK(items[1].entry.size == 0);

  auto slash = entry("file/", EntryType::regular, 0644);
  CHECK_THROWS_WITH(TarWriter::encode_header(slash), Catch::Contains("ends with '/'"));
  auto bad_key = entry("f", EntryType::regular, 0644);
  bad_key.other_pax["a=b"] = "x";
  CHECK_THROWS_WITH(TarWriter::encode_header(bad_key), Catch::Contains("invalid PAX record key"));
  auto nul = entry(std::string("a\0b", 3), EntryType::regular, 0644);
  CHECK_THROWS_WITH(TarWriter::encode_header(nul), Catch::Contains("NUL byte in path"));
}
