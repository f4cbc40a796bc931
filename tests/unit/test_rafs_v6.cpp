// RAFS v6 bootstrap: write -> read round trips over every inode kind, byte-for-byte determinism,
// corrupted bootstraps that the reader must refuse with a message naming the fault, and (when
// erofs-utils is installed) fsck.erofs extracting a written bootstrap with its blob as the device.
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "convert/byte_source.hpp"
#include "convert/rafs_v6.hpp"
#include "test_files.hpp"

using namespace accel::convert;
using namespace accel::convert::rafs;
namespace fs = std::filesystem;

namespace {

// --- building trees -----------------------------------------------------------------------------

// A blob whose uncompressed space is built chunk by chunk (compressor none, chunks 4K-aligned,
// so the data doubles as the EROFS extra device).
struct BlobBuilder {
  uint32_t index;
  char id_char;
  std::string data;
  uint32_t count = 0;

  BlobBuilder(uint32_t index, char id_char) : index(index), id_char(id_char) {}

  ChunkRef add(std::string_view content, uint64_t file_offset) {
    ChunkRef c;
    c.blob_index = index;
    c.ci_index = count++;
    c.uncompressed_offset = data.size();
    c.uncompressed_size = static_cast<uint32_t>(content.size());
    c.compressed_offset = data.size();
    c.compressed_size = c.uncompressed_size;
    c.compressed = false;
    size_t h = std::hash<std::string_view>()(content);
    for (size_t i = 0; i < c.digest.size(); ++i) c.digest[i] = static_cast<uint8_t>((h >> (i % 8 * 8)) + i);
    c.file_offset = file_offset;
    data += content;
    data.resize((data.size() + 4095) / 4096 * 4096, '\0');
    return c;
  }

  BlobInfo info() const {
    BlobInfo b;
    b.blob_id = std::string(64, id_char);
    b.chunk_count = count;
    b.compressor = Compressor::none;
    b.features = blob_feature::aligned | blob_feature::cap_tar_toc;
    b.compressed_size = data.size();
    b.uncompressed_size = data.size();
    b.ci_offset = data.size();
    b.ci_compressed_size = b.ci_uncompressed_size = uint64_t{count} * 16;
    return b;
  }
};

struct TreeBuilder {
  Tree tree;
  uint32_t chunk_size = 4096;

  TreeBuilder() { tree.inodes.push_back(node(S_IFDIR | 0755)); }

  static Inode node(uint32_t mode, uint32_t uid = 0, uint32_t gid = 0) {
    Inode i;
    i.mode = mode;
    i.uid = uid;
    i.gid = gid;
    i.mtime = 1700000000;
    i.mtime_nsec = 123456789;
    return i;
  }
  void link(uint32_t parent, const std::string& name, uint32_t child) {
    auto& c = tree.inodes[parent].children;
    c.emplace_back(name, child);
    std::sort(c.begin(), c.end());
  }
  uint32_t add(uint32_t parent, const std::string& name, Inode inode) {
    tree.inodes.push_back(std::move(inode));
    const auto index = static_cast<uint32_t>(tree.inodes.size() - 1);
    link(parent, name, index);
    return index;
  }
  uint32_t dir(uint32_t parent, const std::string& name) { return add(parent, name, node(S_IFDIR | 0755)); }
  uint32_t file(uint32_t parent, const std::string& name, const std::string& content, BlobBuilder& blob,
                uint32_t mode = S_IFREG | 0644) {
    Inode i = node(mode);
    i.size = content.size();
    for (uint64_t off = 0; off < content.size(); off += chunk_size)
      i.chunks.push_back(blob.add(std::string_view(content).substr(off, chunk_size), off));
    return add(parent, name, std::move(i));
  }
  uint32_t symlink(uint32_t parent, const std::string& name, const std::string& target) {
    Inode i = node(S_IFLNK | 0777);
    i.symlink_target = target;
    return add(parent, name, std::move(i));
  }
};

// A canonical description of a tree by path, so trees with different inode numbering compare.
std::map<std::string, std::string> describe(const Tree& tree) {
  std::map<std::string, std::string> out;
  std::map<uint32_t, std::string> first_path;
  std::function<void(uint32_t, const std::string&)> walk = [&](uint32_t index, const std::string& path) {
    auto [it, fresh] = first_path.emplace(index, path);
    const Inode& i = tree.inodes[index];
    std::string d = "mode=" + std::to_string(i.mode) + " uid=" + std::to_string(i.uid) +
                    " gid=" + std::to_string(i.gid) + " mtime=" + std::to_string(i.mtime) + "." +
                    std::to_string(i.mtime_nsec) + " link=" + it->second;
    if (S_ISREG(i.mode)) d += " size=" + std::to_string(i.size);
    if (S_ISCHR(i.mode) || S_ISBLK(i.mode))
      d += " dev=" + std::to_string(i.dev_major) + ":" + std::to_string(i.dev_minor);
    if (S_ISLNK(i.mode)) d += " target=" + i.symlink_target;
    for (const auto& [k, v] : i.xattrs) d += " xattr:" + k + "=" + v;
    for (const auto& c : i.chunks)
      d += " chunk(" + std::to_string(c.blob_index) + "," + std::to_string(c.ci_index) + "," +
           std::to_string(c.uncompressed_offset) + "," + std::to_string(c.uncompressed_size) + "," +
           std::to_string(c.compressed_offset) + "," + std::to_string(c.compressed_size) + "," +
           std::to_string(c.compressed) + "," + std::to_string(c.file_offset) + "," +
           std::to_string(c.digest[0]) + std::to_string(c.digest[31]) + ")";
    out[path] = d;
    if (!fresh) return;
    for (const auto& [name, child] : i.children) walk(child, (path == "/" ? "" : path) + "/" + name);
  };
  walk(0, "/");
  return out;
}

// The sample tree: every inode kind, two blobs, a directory spanning blocks, names sorting
// before ".", hardlinks, short and long symlinks, devices, xattrs of every prefix.
struct Sample {
  TreeBuilder t;
  BlobBuilder b0{0, 'a'};
  BlobBuilder b1{1, 'b'};
  std::map<std::string, std::string> contents;  // path -> file bytes

  Sample() {
    auto& T = t;
    const uint32_t etc = T.dir(0, "etc");
    const uint32_t big = T.dir(0, "big");
    for (int i = 0; i < 150; ++i) T.file(big, "entry-with-a-longish-name-" + std::to_string(i), "", b0);
    T.dir(big, "!x");
    T.file(big, "-x", "dash", b0);
    std::string pattern;
    for (int i = 0; i < 10000; ++i) pattern += static_cast<char>('A' + i % 26);
    const uint32_t data = T.file(0, "data", pattern, b0);
    contents["/data"] = pattern;
    T.file(0, "other", std::string(5000, 'z'), b1);
    contents["/other"] = std::string(5000, 'z');
    T.file(etc, "hello", "hello world\n", b1);
    T.file(etc, "\xc3\xa9t\xc3\xa9", "", b1);  // sorts after "~" as raw bytes
    T.file(etc, "~tilde", "", b1);
    contents["/etc/hello"] = "hello world\n";
    T.file(etc, "empty", "", b0);
    contents["/etc/empty"] = "";
    T.link(etc, "hardlink-to-data", data);
    T.link(0, "data2", data);
    T.symlink(0, "short", "etc/hello");
    T.symlink(0, "long", std::string(3000, 'l'));
    Inode chr = TreeBuilder::node(S_IFCHR | 0600);
    chr.dev_major = 4095;
    chr.dev_minor = 0x12345;
    T.add(0, "chr", chr);
    Inode blk = TreeBuilder::node(S_IFBLK | 0600);
    blk.dev_major = 8;
    blk.dev_minor = 1;
    T.add(0, "blk", blk);
    T.add(0, "fifo", TreeBuilder::node(S_IFIFO | 0644));
    T.add(0, "sock", TreeBuilder::node(S_IFSOCK | 0755));
    Inode x = TreeBuilder::node(S_IFREG | 04755, 70000, 80000);
    x.xattrs = {{"security.capability", std::string("\x01\x00\x00\x02", 4)},
                {"system.posix_acl_access", std::string(28, '\x02')},
                {"system.posix_acl_default", std::string(12, '\x03')},
                {"trusted.overlay.opaque", "y"},
                {"user.comment", "a value"}};
    std::sort(x.xattrs.begin(), x.xattrs.end());
    x.size = 3;
    x.chunks.push_back(b1.add("abc", 0));
    T.add(etc, "setuid", x);
    contents["/etc/setuid"] = "abc";
    Inode sg = TreeBuilder::node(S_IFDIR | 02775 | 01000, 1, 2);
    T.add(etc, "sticky", sg);
  }

  Bootstrap bootstrap(Compressor compressor = Compressor::zstd) const {
    Bootstrap b;
    b.chunk_size = t.chunk_size;
    b.compressor = compressor;
    b.blobs = {b0.info(), b1.info()};
    b.tree = t.tree;
    b.prefetch = {"/etc/hello", "/missing", "/data2", "/etc/hello", "/"};
    return b;
  }
};

// --- reading raw fields back for corruption tests -----------------------------------------------

template <typename T>
T get(const std::string& s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof v);
  return v;
}
template <typename T>
void set(std::string& s, size_t off, T v) {
  std::memcpy(s.data() + off, &v, sizeof v);
}

uint64_t meta_start(const std::string& s) { return uint64_t{get<uint32_t>(s, 1024 + 40)} * 4096; }
uint64_t inode_offset(const std::string& s, uint64_t nid) { return meta_start(s) + nid * 32; }
uint64_t root_offset(const std::string& s) { return inode_offset(s, get<uint16_t>(s, 1024 + 14)); }
// The root's directory data sits inline right after it when small (FLAT_INLINE, no xattrs).
uint64_t root_dirents(const std::string& s) {
  REQUIRE(get<uint16_t>(s, root_offset(s)) == (1 | (2 << 1)));
  REQUIRE(get<uint16_t>(s, root_offset(s) + 2) == 0);
  return root_offset(s) + 64;
}

std::string read_error(const std::string& bytes) {
  try {
    read_bootstrap(bytes);
  } catch (const ConvertError& e) {
    return e.what();
  }
  return "no error";
}

std::string write_error(const Bootstrap& b) {
  try {
    write_bootstrap(b);
  } catch (const ConvertError& e) {
    return e.what();
  }
  return "no error";
}

// A small bootstrap for the corruption tests: root {a1/ {sub/}, b2 (one chunk)}.
struct Small {
  TreeBuilder t;
  BlobBuilder blob{0, 'c'};
  std::string bytes;
  Small() {
    const uint32_t a = t.dir(0, "a1");
    t.dir(a, "sub");
    t.file(0, "b2", "content of b2", blob);
    for (int i = 0; i < 3; ++i) blob.add("spare" + std::to_string(i), 0);
    Bootstrap b;
    b.chunk_size = 4096;
    b.blobs = {blob.info()};
    b.tree = t.tree;
    bytes = write_bootstrap(b);
  }
  // Root dirents: ".", "..", "a1", "b2".
  uint64_t dirent(int k) const { return root_dirents(bytes) + 12 * k; }
  uint64_t file_chunk_addr() const { return inode_offset(bytes, get<uint64_t>(bytes, dirent(3))) + 64; }
};

}  // namespace

TEST_CASE("rafs: encode_dev and compressor names", "[rafs]") {
  CHECK(encode_dev(8, 1) == 0x801);
  CHECK(encode_dev(4095, 0x12345) == ((0x45) | (4095u << 8) | (0x12300u << 12)));
  Compressor c;
  CHECK(parse_compressor("zstd", c));
  CHECK(c == Compressor::zstd);
  CHECK(parse_compressor("none", c));
  CHECK(c == Compressor::none);
  CHECK(parse_compressor("lz4_block", c));
  CHECK(c == Compressor::lz4_block);
  CHECK_FALSE(parse_compressor("gzip", c));
  CHECK_FALSE(parse_compressor("lz4", c));
  CHECK(std::string(compressor_name(Compressor::lz4_block)) == "lz4_block");
  CHECK(std::string(compressor_name(Compressor::gzip)) == "gzip");
}

TEST_CASE("rafs: round trip of every inode kind", "[rafs]") {
  Sample s;
  const Bootstrap in = s.bootstrap();
  const std::string bytes = write_bootstrap(in);
  REQUIRE(bytes.size() % 4096 == 0);

  // Fixed fields, as nydusd and the kernel require them.
  CHECK(get<uint32_t>(bytes, 1024) == 0xE0F5E1E2);
  CHECK(get<uint32_t>(bytes, 1024 + 80) == 0xC);
  CHECK(get<uint16_t>(bytes, 1024 + 86) == 2);
  CHECK(get<uint16_t>(bytes, 1024 + 88) == 11);
  CHECK(get<uint64_t>(bytes, 1152) == (0x80 | 0x8 | 0x10 | 0x20 | 0x0100'0000));
  CHECK(get<uint64_t>(bytes, 1160) % 4096 == 0);
  CHECK(get<uint32_t>(bytes, 1024 + 36) == (s.b0.data.size() + s.b1.data.size()) / 4096);
  CHECK(std::string(bytes.data() + 1408, 64) == std::string(64, 'a'));
  CHECK(std::string(bytes.data() + 1408 + 128, 64) == std::string(64, 'b'));

  const Bootstrap out = read_bootstrap(bytes);
  CHECK(out.chunk_size == in.chunk_size);
  CHECK(out.compressor == Compressor::zstd);
  CHECK_FALSE(out.inlined_chunk_digest);
  REQUIRE(out.blobs.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(out.blobs[i].blob_id == in.blobs[i].blob_id);
    CHECK(out.blobs[i].chunk_count == in.blobs[i].chunk_count);
    CHECK(out.blobs[i].features == in.blobs[i].features);
    CHECK(out.blobs[i].uncompressed_size == in.blobs[i].uncompressed_size);
    CHECK(out.blobs[i].ci_uncompressed_size == in.blobs[i].ci_uncompressed_size);
  }
  CHECK(describe(out.tree) == describe(in.tree));
  CHECK(out.prefetch == std::vector<std::string>{"/etc/hello", "/data", "/"});

  // Hardlinks come back as one inode; directory sizes span blocks where they should.
  const auto& root = out.tree.inodes[0];
  auto child = [&](const Inode& dir, const std::string& name) {
    for (const auto& [n, c] : dir.children)
      if (n == name) return c;
    FAIL("no entry " << name);
    return 0u;
  };
  CHECK(child(root, "data") == child(root, "data2"));
  CHECK(child(out.tree.inodes[child(root, "etc")], "hardlink-to-data") == child(root, "data"));
  const Inode& big = out.tree.inodes[child(root, "big")];
  CHECK(big.size > 4096);
  CHECK(big.children.front().first == "!x");
  CHECK(big.children[1].first == "-x");
}

TEST_CASE("rafs: link counts, inode numbers and layouts on disk", "[rafs]") {
  Sample s;
  const std::string bytes = write_bootstrap(s.bootstrap());
  const Bootstrap out = read_bootstrap(bytes);
  // Walk the root's dirents (inline) to find nids by name.
  const uint64_t d = root_dirents(bytes);
  const uint16_t count = get<uint16_t>(bytes, d + 8) / 12;
  std::map<std::string, uint64_t> nids;
  for (uint16_t k = 0; k < count; ++k) {
    const uint16_t off = get<uint16_t>(bytes, d + 12 * k + 8);
    const uint16_t end = k + 1 < count ? get<uint16_t>(bytes, d + 12 * (k + 1) + 8) : 0;
    std::string name = end ? bytes.substr(d + off, end - off) : std::string(bytes.c_str() + d + off);
    nids[name] = get<uint64_t>(bytes, d + 12 * k);
  }
  auto nlink = [&](const std::string& name) {
    return get<uint32_t>(bytes, inode_offset(bytes, nids.at(name)) + 44);
  };
  CHECK(nids.at(".") == get<uint16_t>(bytes, 1024 + 14));
  CHECK(nids.at("..") == nids.at("."));
  CHECK(nlink(".") == 2 + 2);  // big, etc
  CHECK(nlink("data") == 3);
  CHECK(nlink("short") == 1);
  CHECK(nlink("fifo") == 1);
  CHECK(get<uint32_t>(bytes, root_offset(bytes) + 20) == 1);  // root is inode number 1
  CHECK(get<uint32_t>(bytes, inode_offset(bytes, nids.at("chr")) + 16) == encode_dev(4095, 0x12345));
  // Chunk-based file: i_u is the chunk format for 4 KiB chunks, indexes present.
  const uint64_t data = inode_offset(bytes, nids.at("data"));
  CHECK(get<uint16_t>(bytes, data) == (1 | (4 << 1)));
  CHECK(get<uint32_t>(bytes, data + 16) == 0x20);
  CHECK(get<uint16_t>(bytes, data + 64 + 2) == 1);  // device id of blob 0
  // Every inode is 32 B aligned and the long symlink's data does not cross a block.
  for (const auto& [name, nid] : nids) {
    const uint64_t off = inode_offset(bytes, nid);
    const uint16_t format = get<uint16_t>(bytes, off);
    if ((format >> 1) == 2) CHECK(off % 4096 + 64 + get<uint64_t>(bytes, off + 8) % 4096 <= 4096);
  }
}

TEST_CASE("rafs: output is deterministic and independent of input numbering", "[rafs]") {
  Sample s;
  const Bootstrap b = s.bootstrap();
  const std::string first = write_bootstrap(b);
  CHECK(write_bootstrap(b) == first);
  // Writing what was read gives the same bytes.
  CHECK(write_bootstrap(read_bootstrap(first)) == first);
}

TEST_CASE("rafs: minimal trees, other compressors, inlined digests, big chunk indexes", "[rafs]") {
  SECTION("empty root, no blobs") {
    Bootstrap b;
    b.tree.inodes.push_back(TreeBuilder::node(S_IFDIR | 0755));
    b.compressor = Compressor::none;
    const std::string bytes = write_bootstrap(b);
    const Bootstrap out = read_bootstrap(bytes);
    CHECK(out.blobs.empty());
    CHECK(out.tree.inodes.size() == 1);
    CHECK(out.compressor == Compressor::none);
    CHECK(get<uint64_t>(bytes, 1152) == (0x1 | 0x8 | 0x10 | 0x0100'0000));
  }
  SECTION("lz4, inlined chunk digest, ci index beyond 2^16, 1 MiB chunks") {
    TreeBuilder t;
    t.chunk_size = 1 << 20;
    Inode f = TreeBuilder::node(S_IFREG | 0644);
    f.size = 3 << 20;
    BlobBuilder blob{0, '0'};
    blob.count = 70000;
    for (int i = 0; i < 3; ++i) {
      ChunkRef c;
      c.blob_index = 0;
      c.ci_index = 69990 + i;
      c.uncompressed_offset = (uint64_t{69990} + i) << 20;
      c.uncompressed_size = 1 << 20;
      c.compressed_offset = 1000 * i;
      c.compressed_size = 1000;
      c.compressed = true;
      c.file_offset = uint64_t{1} << 20 * i;
      f.chunks.push_back(c);
    }
    t.add(0, "f", f);
    Bootstrap b;
    b.chunk_size = 1 << 20;
    b.compressor = Compressor::lz4_block;
    b.inlined_chunk_digest = true;
    BlobInfo info = blob.info();
    info.uncompressed_size = uint64_t{70000} << 20;
    info.compressor = Compressor::lz4_block;
    b.blobs = {info};
    b.tree = t.tree;
    const std::string bytes = write_bootstrap(b);
    const Bootstrap out = read_bootstrap(bytes);
    CHECK(out.compressor == Compressor::lz4_block);
    CHECK(out.inlined_chunk_digest);
    CHECK(describe(out.tree) == describe(b.tree));
  }
}

TEST_CASE("rafs: the writer refuses what it cannot represent", "[rafs]") {
  Sample s;
  Bootstrap b = s.bootstrap();
  SECTION("xattr prefix") {
    b.tree.inodes[0].xattrs = {{"os2.thing", "x"}};
    CHECK_THAT(write_error(b), Catch::Contains("prefix"));
  }
  SECTION("long name") {
    b.tree.inodes[0].children.emplace_back(std::string(256, 'n'), 1);
    CHECK_THAT(write_error(b), Catch::Contains("exceeds 255 bytes"));
  }
  SECTION("too many blobs") {
    b.blobs.resize(255, b.blobs[0]);
    CHECK_THAT(write_error(b), Catch::Contains("at most 254"));
  }
  SECTION("chunk size") {
    b.chunk_size = 12288;
    CHECK_THAT(write_error(b), Catch::Contains("chunk size"));
    b.chunk_size = 32 << 20;
    CHECK_THAT(write_error(b), Catch::Contains("chunk size"));
  }
  SECTION("chunk index beyond 2^24") {
    b.blobs[0].chunk_count = (1u << 24) + 1;
    b.blobs[0].ci_uncompressed_size = b.blobs[0].ci_compressed_size = uint64_t{b.blobs[0].chunk_count} * 16;
    CHECK_THAT(write_error(b), Catch::Contains("exceeds 2^24"));
  }
  SECTION("wrong chunk count") {
    for (auto& i : b.tree.inodes)
      if (!i.chunks.empty()) i.chunks.pop_back();
    CHECK_THAT(write_error(b), Catch::Contains("chunks for size"));
  }
  SECTION("directory depth") {
    TreeBuilder t;
    uint32_t d = 0;
    for (int i = 0; i < 1025; ++i) d = t.dir(d, "d");
    Bootstrap deep;
    deep.tree = t.tree;
    CHECK_THAT(write_error(deep), Catch::Contains("depth exceeds 1024"));
  }
  SECTION("directory named twice") {
    b.tree.inodes[0].children.emplace_back("zz", b.tree.inodes[0].children[0].second);
    std::sort(b.tree.inodes[0].children.begin(), b.tree.inodes[0].children.end());
    CHECK_THAT(write_error(b), Catch::Contains("a second time"));
  }
}

TEST_CASE("rafs: the reader names each fault of a corrupted bootstrap", "[rafs]") {
  Small s;
  REQUIRE(read_error(s.bytes) == "no error");
  std::string b = s.bytes;
  SECTION("magic") {
    b[1024] ^= 1;
    CHECK_THAT(read_error(b), Catch::Contains("magic"));
  }
  SECTION("incompat") {
    set<uint32_t>(b, 1024 + 80, 0xE);
    CHECK_THAT(read_error(b), Catch::Contains("incompat"));
  }
  SECTION("compat") {
    set<uint32_t>(b, 1024 + 8, 0);
    CHECK_THAT(read_error(b), Catch::Contains("RAFS_V6"));
  }
  SECTION("checksum") {
    set<uint32_t>(b, 1024 + 4, 1);
    CHECK_THAT(read_error(b), Catch::Contains("checksum"));
  }
  SECTION("block size") {
    b[1024 + 12] = 9;
    CHECK_THAT(read_error(b), Catch::Contains("block size"));
  }
  SECTION("device table slot offset") {
    set<uint16_t>(b, 1024 + 88, 12);
    CHECK_THAT(read_error(b), Catch::Contains("slot offset"));
  }
  SECTION("size") {
    b.resize(b.size() - 100);
    CHECK_THAT(read_error(b), Catch::Contains("multiple of 4096"));
    CHECK_THAT(read_error(""), Catch::Contains("multiple of 4096"));
  }
  SECTION("two compressors") {
    set<uint64_t>(b, 1152, get<uint64_t>(b, 1152) | 0x1);
    CHECK_THAT(read_error(b), Catch::Contains("one compressor"));
  }
  SECTION("no digester") {
    set<uint64_t>(b, 1152, get<uint64_t>(b, 1152) & ~uint64_t{0x8});
    CHECK_THAT(read_error(b), Catch::Contains("one digester"));
  }
  SECTION("unknown flag") {
    set<uint64_t>(b, 1152, get<uint64_t>(b, 1152) | 0x1000);
    CHECK_THAT(read_error(b), Catch::Contains("unknown flag"));
  }
  SECTION("blob table out of bounds") {
    set<uint64_t>(b, 1160, b.size());
    CHECK_THAT(read_error(b), Catch::Contains("blob table"));
  }
  SECTION("chunk table overlapping the blob table") {
    set<uint64_t>(b, 1176, get<uint64_t>(b, 1160));
    CHECK_THAT(read_error(b), Catch::Contains("overlaps"));
  }
  const uint64_t blob = get<uint64_t>(b, 1160);
  SECTION("blob index") {
    set<uint32_t>(b, blob + 64, 3);
    CHECK_THAT(read_error(b), Catch::Contains("is not its position"));
  }
  SECTION("blob chunk size") {
    set<uint32_t>(b, blob + 68, 8192);
    CHECK_THAT(read_error(b), Catch::Contains("chunk size differs"));
  }
  SECTION("ALIGNED missing") {
    set<uint32_t>(b, blob + 84, blob_feature::cap_tar_toc);
    CHECK_THAT(read_error(b), Catch::Contains("ALIGNED"));
  }
  SECTION("rejected feature bit") {
    set<uint32_t>(b, blob + 84, get<uint32_t>(b, blob + 84) | 0x1000);
    CHECK_THAT(read_error(b), Catch::Contains("unknown feature bits"));
  }
  SECTION("chunk-info size") {
    set<uint64_t>(b, blob + 128, 17 * 4);
    CHECK_THAT(read_error(b), Catch::Contains("chunk count * 16"));
  }
  SECTION("device slot id") {
    b[1408] = 'd';
    CHECK_THAT(read_error(b), Catch::Contains("device slot 0: blob id differs"));
  }
  SECTION("device slot blocks") {
    set<uint32_t>(b, 1408 + 64, 0);
    CHECK_THAT(read_error(b), Catch::Contains("blocks is 0"));
  }
  SECTION("dirent out of order") {
    // Names of the root's entries: "." ".." "a1" "b2", right after the four dirents.
    const uint64_t names = s.dirent(0) + 48;
    REQUIRE(b.substr(names, 7) == "...a1b2");
    b[names + 3] = 'b';
    b[names + 5] = 'a';
    CHECK_THAT(read_error(b), Catch::Contains("out of order"));
  }
  SECTION("dirent nid beyond the image") {
    set<uint64_t>(b, s.dirent(2), uint64_t{1} << 40);
    CHECK_THAT(read_error(b), Catch::Contains("beyond the bootstrap"));
  }
  SECTION("directory cycle") {
    set<uint64_t>(b, s.dirent(2), get<uint64_t>(b, s.dirent(0)));
    CHECK_THAT(read_error(b), Catch::Contains("reached before"));
  }
  SECTION("dot") {
    set<uint64_t>(b, s.dirent(0), get<uint64_t>(b, s.dirent(3)));
    CHECK_THAT(read_error(b), Catch::Contains("\".\" does not name"));
  }
  SECTION("dirent file type") {
    b[s.dirent(3) + 10] = 2;
    CHECK_THAT(read_error(b), Catch::Contains("file type"));
  }
  SECTION("chunk address missing from the chunk table") {
    set<uint32_t>(b, s.file_chunk_addr() + 4, 3);  // a block no chunk of blob 0 starts at
    CHECK_THAT(read_error(b),
               Catch::Contains("chunk 0 (blob 0, chunk index 0, block 3) has no entry in the chunk table"));
    CHECK_THAT(read_error(b), Catch::Contains("(/b2)"));
  }
  SECTION("chunk address with a device id out of range") {
    set<uint16_t>(b, s.file_chunk_addr() + 2, 2);
    CHECK_THAT(read_error(b), Catch::Contains("device id 2, outside 1..1"));
    set<uint16_t>(b, s.file_chunk_addr() + 2, 0);
    CHECK_THAT(read_error(b), Catch::Contains("device id 0"));
  }
  SECTION("inline data crossing a block") {
    // A tree of directories only (no chunk table after the meta block); move the root to the
    // last slot of its block so that its inline dirents run into the next block.
    TreeBuilder t;
    t.dir(0, "a1");
    Bootstrap only_dirs;
    only_dirs.tree = t.tree;
    b = write_bootstrap(only_dirs);
    b.resize(b.size() + 4096, '\0');
    const uint64_t root = root_offset(b);
    const uint64_t moved = (root / 4096 + 1) * 4096 - 96;
    const std::string copy = b.substr(root, 64 + 64);
    std::memcpy(b.data() + moved, copy.data(), copy.size());
    set<uint16_t>(b, 1024 + 14, static_cast<uint16_t>((moved - meta_start(b)) / 32));
    CHECK_THAT(read_error(b), Catch::Contains("inline data crosses a block boundary"));
  }
  SECTION("nlink 0") {
    set<uint32_t>(b, root_offset(b) + 44, 0);
    CHECK_THAT(read_error(b), Catch::Contains("link count is 0"));
  }
  SECTION("prefetch nid that is no inode") {
    // Put a one-entry prefetch table in the unused slot 0 of the meta area.
    const uint64_t slot = meta_start(b);
    set<uint32_t>(b, slot, 7777);
    set<uint64_t>(b, 1192, slot);
    set<uint32_t>(b, 1200, 4);
    CHECK_THAT(read_error(b), Catch::Contains("prefetch table entry 0: nid 7777"));
  }
  SECTION("chunk table entry beyond its blob") {
    const uint64_t table = get<uint64_t>(b, 1176);
    set<uint64_t>(b, table + 56, uint64_t{1} << 30);
    CHECK_THAT(read_error(b), Catch::Contains("chunk table entry 0: ends beyond"));
  }
}

TEST_CASE("rafs: random corruption never crashes the reader", "[rafs]") {
  Sample s;
  const std::string good = write_bootstrap(s.bootstrap());
  uint32_t state = 12345;
  auto next = [&] { return state = state * 1103515245 + 12345; };
  int rejected = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string b = good;
    const int flips = 1 + next() % 8;
    for (int i = 0; i < flips; ++i) {
      // Mostly the first blocks (superblock, tables, inodes, dirents) where faults matter.
      const size_t at = (next() % 4 == 0 ? next() % b.size() : next() % std::min<size_t>(b.size(), 5 * 4096));
      b[at] = static_cast<char>(next());
    }
    try {
      read_bootstrap(b);
    } catch (const ConvertError&) {
      ++rejected;
    }
  }
  CHECK(rejected > 0);
}

TEST_CASE("rafs: fsck.erofs extracts a written bootstrap with its blob as the device", "[rafs]") {
  if (!fs::exists("/usr/bin/fsck.erofs")) {
    WARN("fsck.erofs not installed, skipped");
    return;
  }
  // One blob: fsck.erofs 1.5 takes one --device. (It extracts hardlinks as copies.)
  TreeBuilder t;
  BlobBuilder blob{0, 'e'};
  std::map<std::string, std::string> files;
  const uint32_t etc = t.dir(0, "etc");
  const uint32_t big = t.dir(0, "big");
  for (int i = 0; i < 150; ++i) {
    const std::string name = "entry-with-a-longish-name-" + std::to_string(i);
    t.file(big, name, name, blob);
    files["big/" + name] = name;
  }
  t.file(big, "-x", "dash", blob);
  files["big/-x"] = "dash";
  std::string pattern;
  for (int i = 0; i < 10000; ++i) pattern += static_cast<char>('a' + i * 7 % 26);
  const uint32_t data = t.file(0, "data", pattern, blob);
  files["data"] = pattern;
  t.link(etc, "hardlink", data);
  files["etc/hardlink"] = pattern;
  t.file(etc, "empty", "", blob);
  files["etc/empty"] = "";
  // 600 chunk addresses (4800 B): the array runs across a block boundary.
  std::string many;
  for (int i = 0; i < 600; ++i) many += std::string(4096, static_cast<char>('A' + i % 50));
  many += "tail";
  t.file(etc, "many", many, blob);
  files["etc/many"] = many;
  t.symlink(0, "short", "etc/hello");
  t.symlink(0, "long", std::string(3000, 'l'));
  Inode x = TreeBuilder::node(S_IFREG | 0644);
  x.xattrs = {{"user.comment", "a value"}};
  x.size = 3;
  x.chunks.push_back(blob.add("abc", 0));
  t.add(etc, "xattr", x);
  files["etc/xattr"] = "abc";

  Bootstrap b;
  b.chunk_size = 4096;
  b.compressor = Compressor::none;
  b.blobs = {blob.info()};
  b.tree = t.tree;
  TempDir dir("rafs-fsck");
  const std::string boot = dir.path() + "/image.boot", dev = dir.path() + "/blob", out = dir.path() + "/out";
  std::ofstream(boot, std::ios::binary) << write_bootstrap(b);
  std::ofstream(dev, std::ios::binary) << blob.data;
  const std::string command = "/usr/bin/fsck.erofs --device=" + dev + " --extract=" + out + " " + boot +
                              " > " + dir.path() + "/log 2>&1";
  const int rc = std::system(command.c_str());
  INFO(read_file(dir.path() + "/log"));
  REQUIRE(rc == 0);
  for (const auto& [path, content] : files) {
    INFO(path);
    CHECK(read_file(out + "/" + path) == content);
  }
  CHECK(fs::read_symlink(out + "/short") == "etc/hello");
  CHECK(fs::read_symlink(out + "/long").string() == std::string(3000, 'l'));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(out + "/big")) ++entries;
  CHECK(entries == 151);
}
