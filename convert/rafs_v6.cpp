// RAFS v6 bootstrap writer and validating reader. The layout and the checks follow
// docs/formats/nydus.md (§2): an EROFS image with 4 KiB blocks whose regular files are
// chunk-based and point into one extra device per Nydus blob, plus nydusd's RAFS tables.
//
// Writer layout (all deterministic):
//   block 0        zero | EROFS superblock @1024 | RAFS ext superblock @1152 | device table @1408
//   4K-aligned     blob table, then the prefetch table (u32 nids)
//   meta_blkaddr   inodes in BFS order from the root (root at nid 1: readdir hides inode 0), each
//                  with its inline xattrs and then its inline tail (directory tail, symlink) or
//                  chunk addresses; an inode never lets inline data cross a 4 KiB block
//   4K-aligned     raw blocks of directories and symlinks that did not fit inline
//   4K-aligned     chunk table (80 B per distinct chunk), then zero padding to 4 KiB
#include "convert/rafs_v6.hpp"

#include <algorithm>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "convert/byte_source.hpp"

namespace accel::convert::rafs {
namespace {

// --- on-disk constants ---------------------------------------------------------------------------

constexpr uint64_t kSuperOffset = 1024;
constexpr uint64_t kExtSuperOffset = 1152;
constexpr uint64_t kDeviceTableOffset = 1408;
constexpr uint32_t kDeviceSlotSize = 128;
constexpr uint32_t kBlobEntrySize = 256;
constexpr uint32_t kChunkInfoSize = 80;
constexpr uint32_t kDirentSize = 12;
constexpr uint32_t kCompactInodeSize = 32;
constexpr uint32_t kExtendedInodeSize = 64;
constexpr uint32_t kSlotSize = 32;  // nid unit
constexpr uint32_t kChunkAddrSize = 8;
constexpr uint32_t kXattrHeaderSize = 12;

constexpr uint32_t kMagic = 0xE0F5E1E2;
constexpr uint32_t kCompatRafsV6 = 0x4000'0000;
constexpr uint32_t kIncompat = 0x4 | 0x8;  // CHUNKED_FILE | DEVICE_TABLE
constexpr uint16_t kDevtSlotOff = kDeviceTableOffset / kDeviceSlotSize;
constexpr uint8_t kBlockBits = 12;

constexpr uint16_t kFlatPlain = 0;
constexpr uint16_t kFlatInline = 2;
constexpr uint16_t kChunkBased = 4;
constexpr uint16_t kChunkFormatIndexes = 0x20;
constexpr uint16_t kChunkFormatBitsMask = 0x1f;

namespace flag {
constexpr uint64_t none = 0x1, lz4 = 0x2, blake3 = 0x4, sha256 = 0x8, explicit_uid_gid = 0x10,
                   has_xattr = 0x20, gzip = 0x40, zstd = 0x80, inlined_chunk_digest = 0x100,
                   tarfs_mode = 0x200, encryption_none = 0x0100'0000;
constexpr uint64_t compression = none | lz4 | gzip | zstd;
constexpr uint64_t hash = blake3 | sha256;
// Every bit nydusd's RafsSuperFlags defines (its PRESERVED_COMPAT bits included); others fail.
constexpr uint64_t known = 0x3ff | 0xff00'0000;
}  // namespace flag

// BlobFeatures bits nydusd refuses to load.
constexpr uint32_t kRejectedBlobFeatures = 0x0000'f000 | 0x8000'0000;
constexpr uint32_t kChunkCompressed = 0x1;
constexpr uint32_t kKnownChunkFlags = 0x1f;

constexpr uint32_t kMaxBlobs = 254;  // device ids 1..254 survive the kernel's device-id mask
constexpr uint32_t kMaxChunksPerBlob = 1u << 24;
constexpr size_t kMaxNameLength = 255;
constexpr size_t kMaxSymlinkLength = kBlockSize - 1;
constexpr uint64_t kMaxCompressedBlobSize = 1ull << 40;
constexpr uint64_t kMaxUncompressedBlobSize = 1ull << 44;
constexpr size_t kMaxDepth = 1024;

// EROFS dirent file types.
enum FileType : uint8_t {
  ft_reg = 1,
  ft_dir = 2,
  ft_chr = 3,
  ft_blk = 4,
  ft_fifo = 5,
  ft_sock = 6,
  ft_lnk = 7
};

uint8_t file_type(uint32_t mode) {
  switch (mode & 0170000) {
    case 0100000: return ft_reg;
    case 0040000: return ft_dir;
    case 0020000: return ft_chr;
    case 0060000: return ft_blk;
    case 0010000: return ft_fifo;
    case 0140000: return ft_sock;
    case 0120000: return ft_lnk;
    default: return 0;
  }
}

struct XattrPrefix {
  uint8_t index;
  std::string_view prefix;
  bool whole_name;  // the POSIX ACL indexes name the whole attribute
};
constexpr XattrPrefix kXattrPrefixes[] = {{2, "system.posix_acl_access", true},
                                          {3, "system.posix_acl_default", true},
                                          {1, "user.", false},
                                          {4, "trusted.", false},
                                          {6, "security.", false}};

[[noreturn]] void fail(const std::string& message) { throw ConvertError("RAFS v6 bootstrap: " + message); }

uint64_t align_up(uint64_t value, uint64_t unit) { return (value + unit - 1) / unit * unit; }

// --- little-endian access ------------------------------------------------------------------------

template <typename T>
void put(std::string& out, uint64_t offset, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[offset + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

// The caller has checked that [offset, offset + sizeof(T)) lies inside `in`.
template <typename T>
T get(std::string_view in, uint64_t offset) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    value |= static_cast<T>(static_cast<T>(static_cast<uint8_t>(in[offset + i])) << (8 * i));
  return value;
}

// --- checks shared by writer and reader ----------------------------------------------------------

bool valid_blob_id(std::string_view id) {
  if (id.size() != 64) return false;
  if (id == kPlaceholderBlobId) return true;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool valid_chunk_size(uint64_t size) {
  return size >= kMinChunkSize && size <= kMaxChunkSize && (size & (size - 1)) == 0;
}

// RafsV6Blob::validate, in nydusd's order.
void check_blob(const BlobInfo& blob, uint32_t index, uint32_t digest_algo, uint32_t cipher_algo,
                bool tarfs_mode) {
  const std::string where = "blob table entry " + std::to_string(index) + ": ";
  if (!valid_blob_id(blob.blob_id)) fail(where + "blob id is not 64 lowercase hex characters");
  if (blob.chunk_count > kMaxChunksPerBlob)
    fail(where + "chunk count " + std::to_string(blob.chunk_count) + " exceeds 2^24");
  if (static_cast<uint32_t>(blob.compressor) > 3 || static_cast<uint32_t>(blob.ci_compressor) > 3)
    fail(where + "unknown compression algorithm");
  if (digest_algo > 1) fail(where + "unknown digest algorithm " + std::to_string(digest_algo));
  if (cipher_algo > 3) fail(where + "unknown cipher algorithm " + std::to_string(cipher_algo));
  if (blob.uncompressed_size > kMaxUncompressedBlobSize) fail(where + "uncompressed size exceeds 2^44");
  if (blob.compressed_size > kMaxCompressedBlobSize) fail(where + "compressed size exceeds 2^40");
  const uint32_t f = blob.features;
  if (f & kRejectedBlobFeatures) fail(where + "unknown feature bits in " + std::to_string(f));
  const bool aligned = f & blob_feature::aligned;
  if (!aligned && !tarfs_mode) fail(where + "feature ALIGNED is not set");
  if (aligned && tarfs_mode) fail(where + "feature ALIGNED is set in tarfs mode");
  if (blob.ci_offset + blob.ci_compressed_size < blob.ci_offset)
    fail(where + "chunk-info offset + size overflows");
  if (blob.ci_compressed_size > blob.ci_uncompressed_size)
    fail(where + "chunk-info compressed size exceeds its uncompressed size");
  const uint64_t count = blob.chunk_count;
  const bool v2 = f & blob_feature::chunk_info_v2;
  const bool needs_v2 = f & (blob_feature::batch | blob_feature::zran | blob_feature::encrypted);
  if (v2 && needs_v2) {
    if (blob.ci_uncompressed_size < count * 24) fail(where + "chunk-info size below chunk count * 24");
  } else if (v2) {
    if (blob.ci_uncompressed_size != count * 24) fail(where + "chunk-info size is not chunk count * 24");
  } else if (needs_v2) {
    fail(where + "features ZRAN/BATCH/ENCRYPTED require CHUNK_INFO_V2");
  } else if (!(f & blob_feature::is_chunkdict_generated) && !tarfs_mode &&
             blob.ci_uncompressed_size != count * 16) {
    fail(where + "chunk-info size " + std::to_string(blob.ci_uncompressed_size) + " is not chunk count * 16");
  }
}

uint64_t expected_chunk_size(uint64_t file_size, uint64_t chunk_size, uint64_t chunk) {
  return std::min<uint64_t>(chunk_size, file_size - chunk * chunk_size);
}

// ===================================================================================================
// Writer
// ===================================================================================================

struct DirentOut {
  std::string_view name;
  uint32_t inode;  // index in Tree::inodes
  uint8_t type;
};

// Serializes dirents (sorted, "." and ".." included) into EROFS directory blocks: each block holds
// its dirents then their names, no entry straddles a block; the last block is not padded, so the
// result's size is the directory's i_size. `nids` maps inode indexes to nids (empty: all zero).
std::string encode_dir(const std::vector<DirentOut>& entries, const std::vector<uint64_t>& nids) {
  std::string out;
  size_t i = 0;
  while (i < entries.size()) {
    size_t used = 0, end = i;
    while (end < entries.size() && used + kDirentSize + entries[end].name.size() <= kBlockSize)
      used += kDirentSize + entries[end].name.size(), ++end;
    const size_t base = out.size();
    out.resize(base + used);
    size_t nameoff = (end - i) * kDirentSize;
    for (size_t k = i; k < end; ++k) {
      const size_t at = base + (k - i) * kDirentSize;
      put<uint64_t>(out, at, nids.empty() ? 0 : nids[entries[k].inode]);
      put<uint16_t>(out, at + 8, static_cast<uint16_t>(nameoff));
      put<uint8_t>(out, at + 10, entries[k].type);
      std::memcpy(out.data() + base + nameoff, entries[k].name.data(), entries[k].name.size());
      nameoff += entries[k].name.size();
    }
    i = end;
    if (i < entries.size()) out.resize(align_up(out.size(), kBlockSize));
  }
  return out;
}

std::string encode_xattrs(const Inode& inode, const std::string& where) {
  if (inode.xattrs.empty()) return {};
  std::string out(kXattrHeaderSize, '\0');
  for (const auto& [name, value] : inode.xattrs) {
    const XattrPrefix* match = nullptr;
    for (const auto& p : kXattrPrefixes) {
      if (p.whole_name ? name == p.prefix : name.compare(0, p.prefix.size(), p.prefix) == 0) {
        match = &p;
        break;
      }
    }
    if (!match) fail(where + ": xattr \"" + name + "\" has a prefix EROFS cannot store");
    const std::string_view suffix = std::string_view(name).substr(match->prefix.size());
    if (suffix.size() > kMaxNameLength) fail(where + ": xattr name \"" + name + "\" is too long");
    if (value.size() > 0xffff) fail(where + ": xattr \"" + name + "\" value exceeds 65535 bytes");
    const size_t at = out.size();
    out.resize(align_up(at + 4 + suffix.size() + value.size(), 4));
    put<uint8_t>(out, at, static_cast<uint8_t>(suffix.size()));
    put<uint8_t>(out, at + 1, match->index);
    put<uint16_t>(out, at + 2, static_cast<uint16_t>(value.size()));
    std::memcpy(out.data() + at + 4, suffix.data(), suffix.size());
    std::memcpy(out.data() + at + 4 + suffix.size(), value.data(), value.size());
  }
  if ((out.size() - kXattrHeaderSize) / 4 + 1 > 0xffff) fail(where + ": xattrs are too large");
  return out;
}

struct Node {
  uint32_t inode = 0;
  uint8_t type = 0;
  int64_t parent = -1;    // inode index of the directory that first named it
  std::string_view name;  // in that directory
  uint32_t links = 0;     // dirents naming it
  uint32_t subdirs = 0;
  size_t depth = 0;
  std::vector<DirentOut> dirents;  // directories, sorted, "." and ".." included
  std::string xattrs;
  uint64_t data_size = 0;  // directories and symlinks
  // placement
  uint64_t offset = 0;
  uint16_t layout = kFlatPlain;
  uint64_t raw_blocks = 0;  // blocks of data stored at raw_blkaddr
  uint32_t raw_blkaddr = 0;
};

class Writer {
 public:
  explicit Writer(const Bootstrap& b) : b_(b), tree_(b.tree.inodes) {}

  std::string run() {
    check_globals();
    walk();
    resolve_prefetch();
    layout();
    return serialize();
  }

 private:
  std::string path_of(uint32_t index) const {
    if (index == 0) return "/";
    std::vector<std::string_view> parts;
    for (int64_t i = index; i > 0 && parts.size() <= kMaxDepth;
         i = slot_[i] >= 0 ? nodes_[slot_[i]].parent : 0)
      parts.push_back(slot_[i] >= 0 ? nodes_[slot_[i]].name : std::string_view("?"));
    std::string path;
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) path += "/" + std::string(*it);
    return path;
  }
  std::string where(uint32_t index) const {
    return "inode " + std::to_string(index) + " (" + path_of(index) + ")";
  }

  void check_globals() {
    if (!valid_chunk_size(b_.chunk_size))
      fail("chunk size " + std::to_string(b_.chunk_size) + " is not a power of two in [4096, 16 MiB]");
    if (b_.blobs.size() > kMaxBlobs)
      fail(std::to_string(b_.blobs.size()) + " blobs, at most 254 fit in a bootstrap");
    if (static_cast<uint32_t>(b_.compressor) > 3) fail("unknown compressor");
    for (size_t i = 0; i < b_.blobs.size(); ++i) {
      check_blob(b_.blobs[i], static_cast<uint32_t>(i), 1, 0, false);
      for (size_t j = 0; j < i; ++j)
        if (b_.blobs[j].blob_id == b_.blobs[i].blob_id)
          fail("blob table entries " + std::to_string(j) + " and " + std::to_string(i) + " have the same id");
    }
    if (tree_.empty() || file_type(tree_[0].mode) != ft_dir) fail("the root inode is not a directory");
  }

  // BFS from the root: the placement order, parents, link counts and sorted dirents.
  void walk() {
    slot_.assign(tree_.size(), -1);
    add_node(0, -1, {});
    nodes_[0].links = 1;
    for (size_t n = 0; n < nodes_.size(); ++n) {
      if (nodes_[n].type != ft_dir) continue;
      const uint32_t self = nodes_[n].inode;
      const Inode& dir = tree_[self];
      std::vector<DirentOut> dirents;
      dirents.push_back({".", self, ft_dir});
      dirents.push_back({"..", n == 0 ? self : static_cast<uint32_t>(nodes_[n].parent), ft_dir});
      for (const auto& [name, child] : dir.children) {
        if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
            name.find('\0') != std::string::npos)
          fail(where(self) + ": invalid entry name \"" + name + "\"");
        if (name.size() > kMaxNameLength)
          fail(where(self) + ": entry name \"" + name.substr(0, 32) + "...\" exceeds 255 bytes");
        if (child >= tree_.size())
          fail(where(self) + ": entry \"" + name + "\" names inode " + std::to_string(child) +
               ", out of range");
        const uint8_t type = file_type(tree_[child].mode);
        if (type == 0)
          fail(where(child) + ": unknown file type in mode " + std::to_string(tree_[child].mode));
        if (slot_[child] < 0) {
          add_node(child, self, name);
          nodes_.back().depth = nodes_[n].depth + 1;
          if (type == ft_dir && nodes_.back().depth > kMaxDepth)
            fail(where(child) + ": directory depth exceeds " + std::to_string(kMaxDepth));
        } else if (type == ft_dir) {
          fail(where(self) + ": entry \"" + name + "\" names directory " + where(child) +
               " a second time (not a tree of directories)");
        }
        ++nodes_[slot_[child]].links;
        if (type == ft_dir) ++nodes_[n].subdirs;
        dirents.push_back({name, child, type});
      }
      std::sort(dirents.begin(), dirents.end(),
                [](const DirentOut& a, const DirentOut& b) { return a.name < b.name; });
      for (size_t i = 1; i < dirents.size(); ++i)
        if (dirents[i].name == dirents[i - 1].name)
          fail(where(self) + ": two entries named \"" + std::string(dirents[i].name) + "\"");
      nodes_[n].dirents = std::move(dirents);
    }
    for (auto& node : nodes_) check_node(node);
  }

  void add_node(uint32_t inode, int64_t parent, std::string_view name) {
    slot_[inode] = static_cast<int64_t>(nodes_.size());
    Node node;
    node.inode = inode;
    node.type = file_type(tree_[inode].mode);
    node.parent = parent;
    node.name = name;
    nodes_.push_back(std::move(node));
  }

  void check_node(Node& node) {
    const Inode& in = tree_[node.inode];
    const std::string w = where(node.inode);
    node.xattrs = encode_xattrs(in, w);
    if (!in.xattrs.empty()) has_xattr_ = true;
    if (node.type == ft_dir) {
      node.data_size = encode_dir(node.dirents, {}).size();
    } else if (node.type == ft_lnk) {
      if (in.symlink_target.empty()) fail(w + ": symlink with an empty target");
      if (in.symlink_target.size() > kMaxSymlinkLength) fail(w + ": symlink target exceeds 4095 bytes");
      if (in.symlink_target.find('\0') != std::string::npos) fail(w + ": symlink target contains a NUL byte");
      node.data_size = in.symlink_target.size();
    } else if (node.type == ft_chr || node.type == ft_blk) {
      if (in.dev_major > 0xfff || in.dev_minor > 0xfffff) fail(w + ": device number out of range");
    } else if (node.type == ft_reg) {
      const uint64_t cs = b_.chunk_size;
      const uint64_t count = in.size / cs + (in.size % cs != 0);
      if (in.chunks.size() != count)
        fail(w + ": " + std::to_string(in.chunks.size()) + " chunks for size " + std::to_string(in.size) +
             ", expected " + std::to_string(count));
      for (size_t i = 0; i < in.chunks.size(); ++i) add_chunk(in.chunks[i], in.size, i, w);
    }
  }

  void add_chunk(const ChunkRef& c, uint64_t file_size, size_t i, const std::string& w) {
    const std::string at = w + ": chunk " + std::to_string(i);
    if (c.blob_index >= b_.blobs.size())
      fail(at + " names blob " + std::to_string(c.blob_index) + ", not in the blob table");
    if (c.ci_index >= b_.blobs[c.blob_index].chunk_count)
      fail(at + " has chunk index " + std::to_string(c.ci_index) + " beyond its blob's chunk count");
    // Block address 0xffffffff is EROFS_NULL_ADDR, a hole to the kernel.
    if (c.uncompressed_offset % kBlockSize != 0 || c.uncompressed_offset / kBlockSize >= 0xffffffffu)
      fail(at + ": uncompressed offset is not 4 KiB aligned or too large");
    if (c.uncompressed_size != expected_chunk_size(file_size, b_.chunk_size, i))
      fail(at + ": uncompressed size " + std::to_string(c.uncompressed_size) + " does not match the file");
    if (!c.compressed && c.compressed_size != c.uncompressed_size)
      fail(at + ": stored raw but compressed size differs from uncompressed size");
    const uint64_t key = (uint64_t{c.blob_index} << 32) | c.ci_index;
    auto [it, inserted] = chunks_.emplace(key, c);
    if (inserted) return;
    const ChunkRef& o = it->second;
    if (o.uncompressed_offset != c.uncompressed_offset || o.uncompressed_size != c.uncompressed_size ||
        o.compressed_offset != c.compressed_offset || o.compressed_size != c.compressed_size ||
        o.compressed != c.compressed || o.digest != c.digest)
      fail(at + " disagrees with another use of blob " + std::to_string(c.blob_index) + " chunk " +
           std::to_string(c.ci_index));
  }

  // Prefetch paths to inode indexes: missing paths skipped, duplicates dropped, order kept.
  void resolve_prefetch() {
    for (const auto& path : b_.prefetch) {
      uint32_t cur = 0;
      bool found = true;
      size_t pos = 0;
      while (found && pos < path.size()) {
        size_t next = path.find('/', pos);
        if (next == std::string::npos) next = path.size();
        const std::string_view part = std::string_view(path).substr(pos, next - pos);
        pos = next + 1;
        if (part.empty()) continue;
        const Node& node = nodes_[slot_[cur]];
        auto it = std::lower_bound(node.dirents.begin(), node.dirents.end(), part,
                                   [](const DirentOut& d, std::string_view n) { return d.name < n; });
        found = node.type == ft_dir && it != node.dirents.end() && it->name == part && part != "." &&
                part != "..";
        if (found) cur = it->inode;
      }
      if (found && in_prefetch_.insert(cur).second) prefetch_.push_back(cur);
    }
  }

  void layout() {
    device_table_end_ = kDeviceTableOffset + uint64_t{kDeviceSlotSize} * b_.blobs.size();
    blob_table_offset_ = std::max<uint64_t>(kBlockSize, align_up(device_table_end_, kBlockSize));
    prefetch_offset_ = blob_table_offset_ + uint64_t{kBlobEntrySize} * b_.blobs.size();
    meta_start_ = align_up(prefetch_offset_ + 4 * prefetch_.size(), kBlockSize);

    uint64_t pos = meta_start_ + kSlotSize;  // nid 0 stays unused: readdir hides inode number 0
    for (auto& node : nodes_) {
      const uint64_t header = kExtendedInodeSize + node.xattrs.size();
      if (header <= kBlockSize && pos % kBlockSize + header > kBlockSize) pos = align_up(pos, kBlockSize);
      if (node.type == ft_dir || node.type == ft_lnk) {
        const uint64_t blocks = (node.data_size + kBlockSize - 1) / kBlockSize;
        const uint64_t tail = node.data_size - (blocks - 1) * kBlockSize;
        const bool inline_tail = header + tail <= kBlockSize;
        if (inline_tail && pos % kBlockSize + header + tail > kBlockSize) pos = align_up(pos, kBlockSize);
        node.offset = pos;
        node.layout = inline_tail ? kFlatInline : kFlatPlain;
        node.raw_blocks = inline_tail ? blocks - 1 : blocks;
        pos += header + (inline_tail ? tail : 0);
      } else if (node.type == ft_reg) {
        node.offset = pos;
        node.layout = kChunkBased;
        pos = align_up(pos + header, kChunkAddrSize) + kChunkAddrSize * tree_[node.inode].chunks.size();
      } else {
        node.offset = pos;
        node.layout = kFlatPlain;
        pos += header;
      }
      pos = align_up(pos, kSlotSize);
    }
    if ((nodes_[0].offset - meta_start_) / kSlotSize > 0xffff) fail("root nid does not fit 16 bits");

    uint64_t data = align_up(pos, kBlockSize);
    for (auto& node : nodes_) {
      if (node.raw_blocks == 0) continue;
      if (data / kBlockSize > 0xffffffffu) fail("bootstrap exceeds 2^32 blocks");
      node.raw_blkaddr = static_cast<uint32_t>(data / kBlockSize);
      data += node.raw_blocks * kBlockSize;
    }
    chunk_table_offset_ = chunks_.empty() ? 0 : data;
    total_ = align_up(data + uint64_t{kChunkInfoSize} * chunks_.size(), kBlockSize);
  }

  uint64_t nid_of(const Node& node) const { return (node.offset - meta_start_) / kSlotSize; }

  std::string serialize() {
    std::string out(total_, '\0');
    std::vector<uint64_t> nids(tree_.size(), 0);
    for (const auto& node : nodes_) nids[node.inode] = nid_of(node);

    // Device slots and s_blocks: a flat address space past the bootstrap, 512 KiB aligned.
    uint64_t mapped = align_up(total_, 512 * 1024) / kBlockSize, total_blocks = 0;
    for (size_t i = 0; i < b_.blobs.size(); ++i) {
      const BlobInfo& blob = b_.blobs[i];
      const uint64_t blocks = std::max<uint64_t>(1, (blob.uncompressed_size + kBlockSize - 1) / kBlockSize);
      if (blocks > 0xffffffffu || mapped > 0xffffffffu)
        fail("blob " + std::to_string(i) + " is too large for the device table");
      const uint64_t slot = kDeviceTableOffset + uint64_t{kDeviceSlotSize} * i;
      std::memcpy(out.data() + slot, blob.blob_id.data(), 64);
      put<uint32_t>(out, slot + 64, static_cast<uint32_t>(blocks));
      put<uint32_t>(out, slot + 68, static_cast<uint32_t>(mapped));
      mapped += blocks;
      total_blocks += blocks;
    }
    if (total_blocks > 0xffffffffu) fail("blobs exceed 2^32 blocks in total");

    // EROFS superblock.
    const uint64_t sb = kSuperOffset;
    put<uint32_t>(out, sb + 0, kMagic);
    put<uint32_t>(out, sb + 8, kCompatRafsV6);
    put<uint8_t>(out, sb + 12, kBlockBits);
    put<uint16_t>(out, sb + 14, static_cast<uint16_t>(nid_of(nodes_[0])));
    put<uint64_t>(out, sb + 16, nodes_.size());
    put<uint32_t>(out, sb + 36, static_cast<uint32_t>(total_blocks));
    put<uint32_t>(out, sb + 40, static_cast<uint32_t>(meta_start_ / kBlockSize));
    put<uint32_t>(out, sb + 80, kIncompat);
    put<uint16_t>(out, sb + 86, static_cast<uint16_t>(b_.blobs.size()));
    put<uint16_t>(out, sb + 88, kDevtSlotOff);

    // RAFS extended superblock.
    uint64_t flags = flag::sha256 | flag::explicit_uid_gid | flag::encryption_none;
    switch (b_.compressor) {
      case Compressor::none: flags |= flag::none; break;
      case Compressor::lz4_block: flags |= flag::lz4; break;
      case Compressor::gzip: flags |= flag::gzip; break;
      case Compressor::zstd: flags |= flag::zstd; break;
    }
    if (has_xattr_) flags |= flag::has_xattr;
    if (b_.inlined_chunk_digest) flags |= flag::inlined_chunk_digest;
    const uint64_t ext = kExtSuperOffset;
    put<uint64_t>(out, ext + 0, flags);
    put<uint64_t>(out, ext + 8, blob_table_offset_);
    put<uint32_t>(out, ext + 16, static_cast<uint32_t>(kBlobEntrySize * b_.blobs.size()));
    put<uint32_t>(out, ext + 20, b_.chunk_size);
    put<uint64_t>(out, ext + 24, chunk_table_offset_);
    put<uint64_t>(out, ext + 32, uint64_t{kChunkInfoSize} * chunks_.size());
    put<uint64_t>(out, ext + 40, prefetch_.empty() ? 0 : prefetch_offset_);
    put<uint32_t>(out, ext + 48, static_cast<uint32_t>(4 * prefetch_.size()));

    // Blob table.
    for (size_t i = 0; i < b_.blobs.size(); ++i) {
      const BlobInfo& blob = b_.blobs[i];
      const uint64_t e = blob_table_offset_ + uint64_t{kBlobEntrySize} * i;
      std::memcpy(out.data() + e, blob.blob_id.data(), 64);
      put<uint32_t>(out, e + 64, static_cast<uint32_t>(i));
      put<uint32_t>(out, e + 68, b_.chunk_size);
      put<uint32_t>(out, e + 72, blob.chunk_count);
      put<uint32_t>(out, e + 76, static_cast<uint32_t>(blob.compressor));
      put<uint32_t>(out, e + 80, 1);  // sha256, as s_flags says
      put<uint32_t>(out, e + 84, blob.features);
      put<uint64_t>(out, e + 88, blob.compressed_size);
      put<uint64_t>(out, e + 96, blob.uncompressed_size);
      put<uint32_t>(out, e + 104, blob.blob_toc_size);
      put<uint32_t>(out, e + 108, static_cast<uint32_t>(blob.ci_compressor));
      put<uint64_t>(out, e + 112, blob.ci_offset);
      put<uint64_t>(out, e + 120, blob.ci_compressed_size);
      put<uint64_t>(out, e + 128, blob.ci_uncompressed_size);
      std::memcpy(out.data() + e + 136, blob.blob_toc_digest.data(), 32);
    }

    for (size_t i = 0; i < prefetch_.size(); ++i) {
      const uint64_t nid = nids[prefetch_[i]];
      if (nid > 0xffffffffu) fail("prefetch nid does not fit 32 bits");
      put<uint32_t>(out, prefetch_offset_ + 4 * i, static_cast<uint32_t>(nid));
    }

    for (size_t n = 0; n < nodes_.size(); ++n)
      write_inode(out, nodes_[n], static_cast<uint32_t>(n + 1), nids);

    // Chunk table, ordered by (blob index, chunk index) as the map is.
    uint64_t at = chunk_table_offset_;
    for (const auto& [key, c] : chunks_) {
      std::memcpy(out.data() + at, c.digest.data(), 32);
      put<uint32_t>(out, at + 32, c.blob_index);
      put<uint32_t>(out, at + 36, c.compressed ? kChunkCompressed : 0);
      put<uint32_t>(out, at + 40, c.compressed_size);
      put<uint32_t>(out, at + 44, c.uncompressed_size);
      put<uint64_t>(out, at + 48, c.compressed_offset);
      put<uint64_t>(out, at + 56, c.uncompressed_offset);
      put<uint64_t>(out, at + 64, c.file_offset);
      put<uint32_t>(out, at + 72, c.ci_index);
      at += kChunkInfoSize;
    }
    return out;
  }

  void write_inode(std::string& out, const Node& node, uint32_t ino, const std::vector<uint64_t>& nids) {
    const Inode& in = tree_[node.inode];
    std::string data;  // directory or symlink bytes
    uint64_t size = 0;
    uint32_t u = 0;
    uint32_t nlink = node.links;
    switch (node.type) {
      case ft_dir:
        data = encode_dir(node.dirents, nids);
        size = data.size();
        nlink = 2 + node.subdirs;
        u = node.raw_blkaddr;
        break;
      case ft_lnk:
        data = in.symlink_target;
        size = data.size();
        u = node.raw_blkaddr;
        break;
      case ft_reg:
        size = in.size;
        u = kChunkFormatIndexes | static_cast<uint16_t>(__builtin_ctz(b_.chunk_size) - kBlockBits);
        break;
      case ft_chr:
      case ft_blk: u = encode_dev(in.dev_major, in.dev_minor); break;
      default: break;
    }
    const uint64_t o = node.offset;
    put<uint16_t>(out, o + 0, static_cast<uint16_t>(1 | (node.layout << 1)));
    put<uint16_t>(
        out, o + 2,
        node.xattrs.empty() ? 0 : static_cast<uint16_t>((node.xattrs.size() - kXattrHeaderSize) / 4 + 1));
    put<uint16_t>(out, o + 4, static_cast<uint16_t>(in.mode));
    put<uint64_t>(out, o + 8, size);
    put<uint32_t>(out, o + 16, u);
    put<uint32_t>(out, o + 20, ino);
    put<uint32_t>(out, o + 24, in.uid);
    put<uint32_t>(out, o + 28, in.gid);
    put<uint64_t>(out, o + 32, in.mtime);
    put<uint32_t>(out, o + 40, in.mtime_nsec);
    put<uint32_t>(out, o + 44, nlink);
    const uint64_t body = o + kExtendedInodeSize;
    std::memcpy(out.data() + body, node.xattrs.data(), node.xattrs.size());
    const uint64_t after = body + node.xattrs.size();

    if (node.type == ft_reg) {
      uint64_t at = align_up(after, kChunkAddrSize);
      for (const auto& c : in.chunks) {
        put<uint16_t>(out, at, static_cast<uint16_t>(c.ci_index & 0xffff));
        put<uint16_t>(out, at + 2,
                      static_cast<uint16_t>((c.blob_index + 1) | (((c.ci_index >> 16) & 0xff) << 8)));
        put<uint32_t>(out, at + 4, static_cast<uint32_t>(c.uncompressed_offset / kBlockSize));
        at += kChunkAddrSize;
      }
    } else if (!data.empty()) {
      const uint64_t raw_bytes = std::min<uint64_t>(data.size(), node.raw_blocks * kBlockSize);
      if (raw_bytes)
        std::memcpy(out.data() + uint64_t{node.raw_blkaddr} * kBlockSize, data.data(), raw_bytes);
      if (node.layout == kFlatInline)
        std::memcpy(out.data() + after, data.data() + raw_bytes, data.size() - raw_bytes);
    }
  }

  const Bootstrap& b_;
  const std::vector<Inode>& tree_;
  std::vector<Node> nodes_;              // BFS order
  std::vector<int64_t> slot_;            // inode index -> position in nodes_, -1 if unreachable
  std::map<uint64_t, ChunkRef> chunks_;  // (blob index << 32 | ci index) -> chunk
  std::vector<uint32_t> prefetch_;
  std::unordered_set<uint32_t> in_prefetch_;
  bool has_xattr_ = false;
  uint64_t device_table_end_ = 0, blob_table_offset_ = 0, prefetch_offset_ = 0, meta_start_ = 0;
  uint64_t chunk_table_offset_ = 0, total_ = 0;
};

// ===================================================================================================
// Reader
// ===================================================================================================

struct RawInode {
  uint64_t nid = 0, offset = 0;
  uint32_t isize = 0, xattr_size = 0;
  uint16_t layout = 0;
  uint8_t type = 0;
  uint64_t size = 0;
  uint32_t u = 0;
};

class Reader {
 public:
  explicit Reader(std::string_view bytes) : in_(bytes), size_(bytes.size()) {}

  Bootstrap run() {
    read_superblocks();
    read_blobs();
    read_chunk_table();
    read_tree();
    read_prefetch();
    return std::move(out_);
  }

 private:
  // Bounds-checked view of [offset, offset + length).
  std::string_view view(uint64_t offset, uint64_t length, const std::string& what) const {
    if (offset > size_ || length > size_ - offset)
      fail(what + " at offset " + std::to_string(offset) + " (+" + std::to_string(length) +
           ") lies outside the bootstrap (" + std::to_string(size_) + " bytes)");
    return in_.substr(offset, length);
  }

  void read_superblocks() {
    if (size_ < kBlockSize || size_ % kBlockSize != 0)
      fail("size " + std::to_string(size_) + " is not a non-zero multiple of 4096");
    const uint64_t sb = kSuperOffset;
    if (get<uint32_t>(in_, sb) != kMagic) fail("superblock: bad EROFS magic");
    if (get<uint32_t>(in_, sb + 4) != 0) fail("superblock: checksum is not 0");
    if (!(get<uint32_t>(in_, sb + 8) & kCompatRafsV6)) fail("superblock: compat feature RAFS_V6 is not set");
    if (get<uint8_t>(in_, sb + 12) != kBlockBits) fail("superblock: block size bits is not 12");
    if (get<uint8_t>(in_, sb + 13) != 0) fail("superblock: extended slots is not 0");
    root_nid_ = get<uint16_t>(in_, sb + 14);
    if (get<uint64_t>(in_, sb + 16) == 0) fail("superblock: inode count is 0");
    meta_start_ = uint64_t{get<uint32_t>(in_, sb + 40)} * kBlockSize;
    if (meta_start_ > size_) fail("superblock: meta block address lies beyond the bootstrap");
    if (get<uint32_t>(in_, sb + 44) != 0) fail("superblock: shared xattr block address is not 0");
    if (get<uint32_t>(in_, sb + 80) != kIncompat)
      fail("superblock: incompat features " + std::to_string(get<uint32_t>(in_, sb + 80)) +
           " are not exactly 0xC");
    if (get<uint16_t>(in_, sb + 84) != 0) fail("superblock: union field is not 0");
    devices_ = get<uint16_t>(in_, sb + 86);
    if (get<uint16_t>(in_, sb + 88) != kDevtSlotOff) fail("superblock: device table slot offset is not 11");
    if (devices_ > kMaxBlobs) fail("superblock: " + std::to_string(devices_) + " extra devices, at most 254");
    if (devices_ == 0 && get<uint32_t>(in_, sb + 36) != 0 && get<uint32_t>(in_, sb + 36) != 4096)
      fail("superblock: blocks set without extra devices");
    device_table_end_ = kDeviceTableOffset + uint64_t{kDeviceSlotSize} * devices_;
    view(kDeviceTableOffset, device_table_end_ - kDeviceTableOffset, "device table");

    const uint64_t ext = kExtSuperOffset;
    flags_ = get<uint64_t>(in_, ext);
    const uint64_t compression = flags_ & flag::compression;
    if (__builtin_popcountll(compression) != 1)
      fail("ext superblock: flags do not name exactly one compressor");
    if (__builtin_popcountll(flags_ & flag::hash) != 1)
      fail("ext superblock: flags do not name exactly one digester");
    if (flags_ & ~flag::known)
      fail("ext superblock: unknown flag bits " + std::to_string(flags_ & ~flag::known));
    out_.compressor = compression == flag::none   ? Compressor::none
                      : compression == flag::lz4  ? Compressor::lz4_block
                      : compression == flag::gzip ? Compressor::gzip
                                                  : Compressor::zstd;
    out_.inlined_chunk_digest = flags_ & flag::inlined_chunk_digest;
    out_.chunk_size = get<uint32_t>(in_, ext + 20);
    if (!valid_chunk_size(out_.chunk_size))
      fail("ext superblock: chunk size " + std::to_string(out_.chunk_size) +
           " is not a power of two in [4096, 16 MiB]");

    blob_table_ = {get<uint64_t>(in_, ext + 8), get<uint32_t>(in_, ext + 16)};
    chunk_table_ = {get<uint64_t>(in_, ext + 24), get<uint64_t>(in_, ext + 32)};
    prefetch_table_ = {get<uint64_t>(in_, ext + 40), get<uint32_t>(in_, ext + 48)};
    check_table(blob_table_, "blob table", kBlobEntrySize, true);
    if (blob_table_.second / kBlobEntrySize != devices_)
      fail("blob table has " + std::to_string(blob_table_.second / kBlobEntrySize) +
           " entries, the device table " + std::to_string(devices_));
    if (chunk_table_.second > 0) {
      check_table(chunk_table_, "chunk table", kChunkInfoSize, true);
      if (overlap(blob_table_, chunk_table_)) fail("blob table overlaps the chunk table");
    }
    if (prefetch_table_.second > 0 && prefetch_table_.first != 0) {
      check_table(prefetch_table_, "prefetch table", 4, false);
      if (overlap(blob_table_, prefetch_table_)) fail("blob table overlaps the prefetch table");
      if (chunk_table_.second > 0 && overlap(chunk_table_, prefetch_table_))
        fail("chunk table overlaps the prefetch table");
    } else {
      prefetch_table_ = {0, 0};
    }
  }

  using Range = std::pair<uint64_t, uint64_t>;  // offset, size
  static bool overlap(const Range& a, const Range& b) {
    return a.second && b.second && a.first < b.first + b.second && b.first < a.first + a.second;
  }
  void check_table(const Range& t, const std::string& name, uint64_t unit, bool aligned) const {
    if (t.first < kBlockSize || t.first < device_table_end_ || (aligned && t.first % kBlockSize != 0) ||
        t.second % unit != 0 || t.first > size_ || t.second > size_ - t.first)
      fail(name + " offset " + std::to_string(t.first) + " / size " + std::to_string(t.second) +
           " is invalid");
  }

  void read_blobs() {
    const bool tarfs_mode = flags_ & flag::tarfs_mode;
    for (uint32_t i = 0; i < devices_; ++i) {
      const std::string_view e = in_.substr(blob_table_.first + uint64_t{kBlobEntrySize} * i, kBlobEntrySize);
      BlobInfo blob;
      blob.blob_id.assign(e.substr(0, 64));
      if (get<uint32_t>(e, 64) != i)
        fail("blob table entry " + std::to_string(i) + ": blob index " +
             std::to_string(get<uint32_t>(e, 64)) + " is not its position");
      if (get<uint32_t>(e, 68) != out_.chunk_size)
        fail("blob table entry " + std::to_string(i) + ": chunk size differs from the superblock's");
      blob.chunk_count = get<uint32_t>(e, 72);
      blob.compressor = static_cast<Compressor>(get<uint32_t>(e, 76));
      blob.features = get<uint32_t>(e, 84);
      blob.compressed_size = get<uint64_t>(e, 88);
      blob.uncompressed_size = get<uint64_t>(e, 96);
      blob.blob_toc_size = get<uint32_t>(e, 104);
      blob.ci_compressor = static_cast<Compressor>(get<uint32_t>(e, 108));
      blob.ci_offset = get<uint64_t>(e, 112);
      blob.ci_compressed_size = get<uint64_t>(e, 120);
      blob.ci_uncompressed_size = get<uint64_t>(e, 128);
      std::memcpy(blob.blob_toc_digest.data(), e.data() + 136, 32);
      check_blob(blob, i, get<uint32_t>(e, 80), get<uint32_t>(e, 216), tarfs_mode);

      const std::string_view slot =
          in_.substr(kDeviceTableOffset + uint64_t{kDeviceSlotSize} * i, kDeviceSlotSize);
      if (slot.substr(0, 64) != blob.blob_id)
        fail("device slot " + std::to_string(i) + ": blob id differs from blob table entry " +
             std::to_string(i));
      if (get<uint32_t>(slot, 64) == 0) fail("device slot " + std::to_string(i) + ": blocks is 0");
      for (uint32_t j = 0; j < i; ++j)
        if (out_.blobs[j].blob_id == blob.blob_id)
          fail("device slots " + std::to_string(j) + " and " + std::to_string(i) + " have the same blob id");
      out_.blobs.push_back(std::move(blob));
    }
  }

  static uint64_t chunk_key(uint32_t blob, uint32_t ci, uint32_t blk) {
    return (uint64_t{blob} << 56) | (uint64_t{ci} << 32) | blk;
  }

  void read_chunk_table() {
    const uint64_t count = chunk_table_.second / kChunkInfoSize;
    chunks_.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      const std::string_view e = in_.substr(chunk_table_.first + i * kChunkInfoSize, kChunkInfoSize);
      const std::string where = "chunk table entry " + std::to_string(i) + ": ";
      ChunkRef c;
      std::memcpy(c.digest.data(), e.data(), 32);
      c.blob_index = get<uint32_t>(e, 32);
      const uint32_t flags = get<uint32_t>(e, 36);
      c.compressed = flags & kChunkCompressed;
      c.compressed_size = get<uint32_t>(e, 40);
      c.uncompressed_size = get<uint32_t>(e, 44);
      c.compressed_offset = get<uint64_t>(e, 48);
      c.uncompressed_offset = get<uint64_t>(e, 56);
      c.file_offset = get<uint64_t>(e, 64);
      c.ci_index = get<uint32_t>(e, 72);
      if (c.blob_index >= out_.blobs.size())
        fail(where + "blob index " + std::to_string(c.blob_index) + " is not in the blob table");
      const BlobInfo& blob = out_.blobs[c.blob_index];
      if (flags & ~kKnownChunkFlags) fail(where + "unknown flags " + std::to_string(flags));
      if (c.ci_index >= kMaxChunksPerBlob) fail(where + "chunk index exceeds 2^24");
      if (!(blob.features & blob_feature::is_chunkdict_generated) && !(flags_ & flag::tarfs_mode) &&
          c.ci_index >= blob.chunk_count)
        fail(where + "chunk index " + std::to_string(c.ci_index) + " is beyond its blob's chunk count");
      if (c.uncompressed_offset % kBlockSize != 0 || c.uncompressed_offset / kBlockSize >= 0xffffffffu)
        fail(where + "uncompressed offset is not 4 KiB aligned or too large");
      if (c.uncompressed_size == 0 || c.uncompressed_size > out_.chunk_size)
        fail(where + "uncompressed size " + std::to_string(c.uncompressed_size) + " is out of range");
      if (c.uncompressed_offset + c.uncompressed_size > align_up(blob.uncompressed_size, kBlockSize))
        fail(where + "ends beyond its blob's uncompressed size");
      if (!c.compressed && c.compressed_size != c.uncompressed_size)
        fail(where + "not compressed but compressed size differs from uncompressed size");
      const uint64_t key =
          chunk_key(c.blob_index, c.ci_index, static_cast<uint32_t>(c.uncompressed_offset / kBlockSize));
      auto [it, inserted] = chunks_.emplace(key, c);
      if (!inserted) {
        const ChunkRef& o = it->second;
        if (o.digest != c.digest || o.compressed != c.compressed || o.compressed_size != c.compressed_size ||
            o.uncompressed_size != c.uncompressed_size || o.compressed_offset != c.compressed_offset)
          fail(where + "conflicts with an earlier entry for the same chunk");
      }
    }
  }

  std::string path_of(uint32_t index) const {
    if (index == 0) return "/";
    std::vector<uint32_t> chain;
    for (uint32_t i = index; i != 0; i = parent_[i]) chain.push_back(i);
    std::string path;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) path += "/" + names_[*it];
    return path;
  }
  std::string where(uint64_t nid, std::optional<uint32_t> index) const {
    std::string w = "inode " + std::to_string(nid);
    if (index) w += " (" + path_of(*index) + ")";
    return w;
  }

  // Charges metadata bytes parsed; a well-formed image never parses more than it holds, so this
  // bounds work and memory on crafted images whose regions overlap.
  void charge(uint64_t bytes, const std::string& w) {
    budget_ += bytes;
    if (budget_ > 2 * size_) fail(w + ": metadata regions overlap (more metadata than the image holds)");
  }

  RawInode parse_inode(uint64_t nid, Inode& inode, const std::string& w) {
    RawInode r;
    r.nid = nid;
    if (nid > (size_ - meta_start_) / kSlotSize) fail(w + ": nid points beyond the bootstrap");
    r.offset = meta_start_ + nid * kSlotSize;
    const uint16_t format = get<uint16_t>(view(r.offset, 2, w), 0);
    if (format & ~0xf) fail(w + ": unknown inode format bits " + std::to_string(format));
    const bool extended = format & 1;
    r.layout = (format >> 1) & 7;
    if (r.layout != kFlatPlain && r.layout != kFlatInline && r.layout != kChunkBased)
      fail(w + ": unsupported data layout " + std::to_string(r.layout));
    r.isize = extended ? kExtendedInodeSize : kCompactInodeSize;
    const std::string_view d = view(r.offset, r.isize, w);
    charge(r.isize, w);
    const uint16_t icount = get<uint16_t>(d, 2);
    inode.mode = get<uint16_t>(d, 4);
    uint32_t nlink;
    if (extended) {
      r.size = get<uint64_t>(d, 8);
      inode.uid = get<uint32_t>(d, 24);
      inode.gid = get<uint32_t>(d, 28);
      inode.mtime = get<uint64_t>(d, 32);
      inode.mtime_nsec = get<uint32_t>(d, 40);
      nlink = get<uint32_t>(d, 44);
    } else {
      r.size = get<uint32_t>(d, 8);
      inode.uid = get<uint16_t>(d, 24);
      inode.gid = get<uint16_t>(d, 26);
      nlink = get<uint16_t>(d, 6);
    }
    r.u = get<uint32_t>(d, 16);
    if (nlink == 0) fail(w + ": link count is 0");
    r.type = file_type(inode.mode);
    if (r.type == 0) fail(w + ": unknown file type in mode " + std::to_string(inode.mode));
    r.xattr_size = icount ? kXattrHeaderSize + (uint32_t{icount} - 1) * 4 : 0;
    if (r.xattr_size) parse_xattrs(view(r.offset + r.isize, r.xattr_size, w + " xattrs"), inode, w);
    return r;
  }

  void parse_xattrs(std::string_view x, Inode& inode, const std::string& w) {
    charge(x.size(), w);
    if (get<uint8_t>(x, 4) != 0) fail(w + ": shared xattrs are not supported");
    uint64_t at = kXattrHeaderSize;
    while (at < x.size()) {
      if (x.size() - at < 4) fail(w + ": truncated xattr entry");
      const uint8_t name_len = get<uint8_t>(x, at);
      const uint8_t index = get<uint8_t>(x, at + 1);
      const uint16_t value_size = get<uint16_t>(x, at + 2);
      if (x.size() - at - 4 < uint64_t{name_len} + value_size)
        fail(w + ": xattr entry runs past the xattr area");
      const XattrPrefix* prefix = nullptr;
      for (const auto& p : kXattrPrefixes)
        if (p.index == index) prefix = &p;
      if (!prefix) fail(w + ": unknown xattr name index " + std::to_string(index));
      if (prefix->whole_name && name_len != 0) fail(w + ": POSIX ACL xattr with a name suffix");
      inode.xattrs.emplace_back(std::string(prefix->prefix) + std::string(x.substr(at + 4, name_len)),
                                std::string(x.substr(at + 4 + name_len, value_size)));
      at = align_up(at + 4 + name_len + value_size, 4);
    }
    std::sort(inode.xattrs.begin(), inode.xattrs.end());
    for (size_t i = 1; i < inode.xattrs.size(); ++i)
      if (inode.xattrs[i].first == inode.xattrs[i - 1].first)
        fail(w + ": xattr \"" + inode.xattrs[i].first + "\" appears twice");
  }

  // Block `j` of a directory's or symlink's data (the last one shorter), wherever the layout puts it.
  std::string_view data_block(const RawInode& r, uint64_t j, const std::string& w) const {
    const uint64_t blocks = (r.size + kBlockSize - 1) / kBlockSize;
    const uint64_t length = std::min<uint64_t>(kBlockSize, r.size - j * kBlockSize);
    if (r.layout == kFlatInline && j + 1 == blocks) {
      const uint64_t start = r.offset + r.isize + r.xattr_size;
      if (start % kBlockSize + length > kBlockSize) fail(w + ": inline data crosses a block boundary");
      return view(start, length, w + " inline data");
    }
    return view((uint64_t{r.u} + j) * kBlockSize, length, w + " data block " + std::to_string(j));
  }

  void read_data_inode(RawInode& r, Inode& inode, const std::string& w) {
    if (r.layout == kChunkBased)
      fail(w + ": chunk-based layout on a " + (r.type == ft_dir ? "directory" : "symlink"));
    if (r.size == 0) fail(w + ": " + (r.type == ft_dir ? "directory" : "symlink") + " with size 0");
    if (r.size > size_) fail(w + ": size exceeds the bootstrap");
    charge(r.size, w);
    if (r.type == ft_lnk) {
      if (r.size > kMaxSymlinkLength) fail(w + ": symlink target exceeds 4095 bytes");
      inode.symlink_target = std::string(data_block(r, 0, w));
      if (inode.symlink_target.find('\0') != std::string::npos)
        fail(w + ": symlink target contains a NUL byte");
    }
    inode.size = r.size;
  }

  void read_file_chunks(const RawInode& r, Inode& inode, const std::string& w) {
    inode.size = r.size;
    if (r.layout != kChunkBased) {
      if (r.size != 0) fail(w + ": regular file with data is not chunk-based");
      return;
    }
    const uint16_t format = static_cast<uint16_t>(r.u);
    if ((format & ~(kChunkFormatIndexes | kChunkFormatBitsMask)) || !(format & kChunkFormatIndexes) ||
        (r.u >> 16))
      fail(w + ": unsupported chunk format " + std::to_string(r.u));
    const uint64_t fs_chunk = out_.chunk_size;
    const uint32_t bits = kBlockBits + (format & kChunkFormatBitsMask);
    if ((uint64_t{1} << bits) < fs_chunk) fail(w + ": inode chunk size is smaller than the filesystem's");
    const bool merged =
        (uint64_t{1} << bits) > fs_chunk;  // nydus-image's next_pow2(size) for contiguous chunks
    // nydusd indexes chunk addresses by the filesystem chunk size, whatever the inode says.
    const uint64_t count = r.size / fs_chunk + (r.size % fs_chunk != 0);
    const uint64_t start = align_up(r.offset + r.isize + r.xattr_size, kChunkAddrSize);
    if (count > size_ / kChunkAddrSize) fail(w + ": chunk addresses lie outside the bootstrap");
    const std::string_view a = view(start, count * kChunkAddrSize, w + " chunk addresses");
    charge(a.size(), w);
    const uint32_t mask = device_mask();
    inode.chunks.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      const std::string at = w + ": chunk " + std::to_string(i);
      const uint16_t lo = get<uint16_t>(a, i * 8), hi = get<uint16_t>(a, i * 8 + 2);
      const uint32_t blk = get<uint32_t>(a, i * 8 + 4);
      const uint32_t device = hi & 0xff;
      if (device == 0 || device > out_.blobs.size() || (hi & mask) != device)
        fail(at + " has device id " + std::to_string(device) + ", outside 1.." +
             std::to_string(out_.blobs.size()));
      const uint32_t blob = device - 1, ci = lo | (static_cast<uint32_t>(hi >> 8) << 16);
      auto it = chunks_.find(chunk_key(blob, ci, blk));
      if (it == chunks_.end())
        fail(at + " (blob " + std::to_string(blob) + ", chunk index " + std::to_string(ci) + ", block " +
             std::to_string(blk) + ") has no entry in the chunk table");
      if (it->second.uncompressed_size != expected_chunk_size(r.size, fs_chunk, i))
        fail(at + " has size " + std::to_string(it->second.uncompressed_size) +
             " in the chunk table, the file needs " +
             std::to_string(expected_chunk_size(r.size, fs_chunk, i)));
      if (merged && i > 0 &&
          (blob != inode.chunks[0].blob_index ||
           uint64_t{blk} != inode.chunks[0].uncompressed_offset / kBlockSize + i * (fs_chunk / kBlockSize)))
        fail(at + " is not contiguous although the inode's chunk size spans several chunks");
      inode.chunks.push_back(it->second);
    }
  }

  // The kernel keeps only the device-id bits the device count needs.
  uint32_t device_mask() const {
    uint32_t p = 1;
    while (p < uint32_t{devices_} + 1) p <<= 1;
    return p - 1;
  }

  void read_tree() {
    const uint64_t max_inodes = size_ / kSlotSize;
    auto add = [&](uint64_t nid, uint32_t parent, std::string name) -> uint32_t {
      const uint32_t index = static_cast<uint32_t>(out_.tree.inodes.size());
      if (index >= max_inodes) fail("more inodes than the bootstrap can hold");
      out_.tree.inodes.emplace_back();
      parent_.push_back(parent);
      names_.push_back(std::move(name));
      raw_.push_back({});
      by_nid_.emplace(nid, index);
      const std::string w = where(nid, index);
      Inode& inode = out_.tree.inodes[index];
      raw_[index] = parse_inode(nid, inode, w);
      RawInode& r = raw_[index];
      if (r.type == ft_dir || r.type == ft_lnk) {
        read_data_inode(r, inode, w);
      } else if (r.type == ft_reg) {
        read_file_chunks(r, inode, w);
      } else {
        if (r.layout == kChunkBased) fail(w + ": chunk-based layout on a special file");
        if (r.type == ft_chr || r.type == ft_blk) {
          inode.dev_major = (r.u & 0xfff00) >> 8;
          inode.dev_minor = (r.u & 0xff) | ((r.u >> 12) & 0xfff00);
        }
        inode.size = 0;
      }
      return index;
    };

    add(root_nid_, 0, "");
    if (raw_[0].type != ft_dir) fail("root " + where(root_nid_, 0) + " is not a directory");
    std::deque<std::pair<uint32_t, size_t>> queue{{0, 0}};  // directory index, depth
    while (!queue.empty()) {
      const auto [dir, depth] = queue.front();
      queue.pop_front();
      if (depth > kMaxDepth)
        fail(where(raw_[dir].nid, dir) + ": directory depth exceeds " + std::to_string(kMaxDepth));
      read_dir(dir, depth, add, queue);
    }
  }

  template <typename Add>
  void read_dir(uint32_t dir, size_t depth, Add& add, std::deque<std::pair<uint32_t, size_t>>& queue) {
    const RawInode r = raw_[dir];
    const std::string w = where(r.nid, dir);
    const uint64_t parent_nid = dir == 0 ? r.nid : raw_[parent_[dir]].nid;
    const uint64_t blocks = (r.size + kBlockSize - 1) / kBlockSize;
    std::string previous;
    bool first = true, saw_dot = false, saw_dotdot = false;
    std::vector<std::pair<std::string, uint32_t>> children;
    for (uint64_t j = 0; j < blocks; ++j) {
      const std::string_view block = data_block(r, j, w);
      const std::string bw = w + " directory block " + std::to_string(j);
      if (block.size() < kDirentSize) fail(bw + ": too short for a dirent");
      const uint16_t nameoff0 = get<uint16_t>(block, 8);
      if (nameoff0 < kDirentSize || nameoff0 % kDirentSize != 0 || nameoff0 >= block.size())
        fail(bw + ": invalid first name offset " + std::to_string(nameoff0));
      const uint32_t count = nameoff0 / kDirentSize;
      dirents_ += count;
      if (dirents_ > size_ / kDirentSize) fail(bw + ": more dirents than the bootstrap can hold");
      for (uint32_t k = 0; k < count; ++k) {
        const uint64_t e = uint64_t{k} * kDirentSize;
        const uint64_t nid = get<uint64_t>(block, e);
        const uint16_t off = get<uint16_t>(block, e + 8);
        const uint8_t type = get<uint8_t>(block, e + 10);
        std::string_view name;
        if (k + 1 < count) {
          const uint16_t next = get<uint16_t>(block, e + kDirentSize + 8);
          if (off < nameoff0 || next <= off || next > block.size())
            fail(bw + ": dirent " + std::to_string(k) + " has an invalid name offset");
          name = block.substr(off, next - off);
        } else {
          if (off < nameoff0 || off >= block.size()) fail(bw + ": last dirent has an invalid name offset");
          name = block.substr(off);
          name = name.substr(0, name.find('\0'));  // the kernel's strnlen: padding ends the name
        }
        if (name.empty() || name.size() > kMaxNameLength || name.find('\0') != std::string_view::npos ||
            name.find('/') != std::string_view::npos)
          fail(bw + ": invalid entry name");
        if (!first && previous.compare(name) >= 0)
          fail(w + ": entry \"" + std::string(name) + "\" is out of order (after \"" + previous + "\")");
        first = false;
        previous.assign(name);
        if (name == ".") {
          if (nid != r.nid || type != ft_dir) fail(w + ": \".\" does not name the directory itself");
          saw_dot = true;
          continue;
        }
        if (name == "..") {
          if (nid != parent_nid || type != ft_dir) fail(w + ": \"..\" does not name the parent directory");
          saw_dotdot = true;
          continue;
        }
        uint32_t child;
        auto it = by_nid_.find(nid);
        if (it != by_nid_.end()) {
          child = it->second;
          if (raw_[child].type == ft_dir)
            fail(w + ": entry \"" + std::string(name) + "\" names directory nid " + std::to_string(nid) +
                 " reached before (a cycle or a hardlinked directory)");
        } else {
          child = add(nid, dir, std::string(name));
          if (raw_[child].type == ft_dir) queue.emplace_back(child, depth + 1);
        }
        if (type != raw_[child].type)
          fail(w + ": entry \"" + std::string(name) + "\" has file type " + std::to_string(type) +
               ", its inode " + std::to_string(raw_[child].type));
        children.emplace_back(std::string(name), child);
      }
    }
    if (!saw_dot || !saw_dotdot) fail(w + ": \".\" or \"..\" is missing");
    out_.tree.inodes[dir].children = std::move(children);
  }

  void read_prefetch() {
    const uint64_t count = prefetch_table_.second / 4;
    std::unordered_set<uint32_t> seen;
    uint64_t path_bytes = 0;
    for (uint64_t i = 0; i < count; ++i) {
      const uint32_t nid = get<uint32_t>(in_, prefetch_table_.first + 4 * i);
      auto it = by_nid_.find(nid);
      if (it == by_nid_.end())
        fail("prefetch table entry " + std::to_string(i) + ": nid " + std::to_string(nid) +
             " is not an inode of the tree");
      if (!seen.insert(it->second).second) continue;
      out_.prefetch.push_back(path_of(it->second));
      path_bytes += out_.prefetch.back().size();
      if (path_bytes > 8 * size_ + (1u << 20)) fail("prefetch table paths exceed any sane size");
    }
  }

  std::string_view in_;
  uint64_t size_;
  Bootstrap out_;
  uint16_t root_nid_ = 0, devices_ = 0;
  uint64_t meta_start_ = 0, device_table_end_ = 0, flags_ = 0;
  Range blob_table_, chunk_table_, prefetch_table_;
  std::unordered_map<uint64_t, ChunkRef> chunks_;  // chunk_key -> entry
  std::unordered_map<uint64_t, uint32_t> by_nid_;
  std::vector<uint32_t> parent_;
  std::vector<std::string> names_;
  std::vector<RawInode> raw_;
  uint64_t budget_ = 0, dirents_ = 0;
};

}  // namespace

const char* compressor_name(Compressor c) {
  switch (c) {
    case Compressor::none: return "none";
    case Compressor::lz4_block: return "lz4_block";
    case Compressor::gzip: return "gzip";
    case Compressor::zstd: return "zstd";
  }
  return "unknown";
}

bool parse_compressor(std::string_view name, Compressor& out) {
  if (name == "none")
    out = Compressor::none;
  else if (name == "zstd")
    out = Compressor::zstd;
  else if (name == "lz4_block")
    out = Compressor::lz4_block;
  else
    return false;
  return true;
}

uint32_t encode_dev(uint32_t major, uint32_t minor) {
  return (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
}

std::string write_bootstrap(const Bootstrap& bootstrap) { return Writer(bootstrap).run(); }

Bootstrap read_bootstrap(std::string_view bytes) { return Reader(bytes).run(); }

}  // namespace accel::convert::rafs
