// RAFS v6, the Nydus bootstrap: an EROFS image whose regular files are chunk-based and point
// into extra devices (one per Nydus blob), plus the RAFS tables nydusd reads (extended
// superblock, blob table, chunk table, prefetch table). See docs/formats/nydus.md.
//
// The model here is a plain tree: the writer lays it out on disk (deterministically: the same
// tree gives the same bytes), the reader parses a bootstrap back into the same model while
// making the checks nydusd and the kernel make at load time. The per-layer bootstraps inside
// Nydus blobs, the merged bootstrap of an image and `accel-proxy check` all go through these two.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace accel::convert::rafs {

inline constexpr uint32_t kBlockSize = 4096;
inline constexpr uint32_t kDefaultChunkSize = 1 << 20;
inline constexpr uint32_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunkSize = 16 << 20;
// The blob id a per-layer bootstrap carries before its blob's digest is known (nydus-image's
// placeholder; merging substitutes the layer digest).
inline constexpr std::string_view kPlaceholderBlobId =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

// Compression algorithm numbers as the blob table stores them.
enum class Compressor : uint32_t { none = 0, lz4_block = 1, gzip = 2, zstd = 3 };
const char* compressor_name(Compressor c);
// "none", "zstd", "lz4_block"; false for anything else.
bool parse_compressor(std::string_view name, Compressor& out);

// BlobFeatures bits (blob table and blob meta header).
namespace blob_feature {
inline constexpr uint32_t aligned = 0x1;
inline constexpr uint32_t inlined_fs_meta = 0x2;
inline constexpr uint32_t chunk_info_v2 = 0x4;
inline constexpr uint32_t zran = 0x8;
inline constexpr uint32_t separate = 0x10;
inline constexpr uint32_t inlined_chunk_digest = 0x20;
inline constexpr uint32_t tarfs = 0x40;
inline constexpr uint32_t batch = 0x80;
inline constexpr uint32_t encrypted = 0x100;
inline constexpr uint32_t is_chunkdict_generated = 0x200;
inline constexpr uint32_t external = 0x800;
inline constexpr uint32_t has_tar_header = 0x1000'0000;
inline constexpr uint32_t has_toc = 0x2000'0000;
inline constexpr uint32_t cap_tar_toc = 0x4000'0000;
}  // namespace blob_feature

using Digest = std::array<uint8_t, 32>;

// One chunk of a regular file's content, as the bootstrap's chunk address and chunk table say.
struct ChunkRef {
  uint32_t blob_index = 0;            // position in the blob table
  uint32_t ci_index = 0;              // index in that blob's chunk-info array
  uint64_t uncompressed_offset = 0;   // in the blob's uncompressed (device) space, 4 KiB aligned
  uint32_t uncompressed_size = 0;
  uint64_t compressed_offset = 0;     // in the blob file
  uint32_t compressed_size = 0;
  bool compressed = false;            // false: stored raw (compressed_size == uncompressed_size)
  Digest digest{};                    // sha256 of the uncompressed bytes
  uint64_t file_offset = 0;           // offset of this chunk in the first file that used it
};

struct Inode {
  uint32_t mode = 0;  // st_mode: file type bits and permissions, setuid/setgid/sticky included
  uint32_t uid = 0, gid = 0;
  uint64_t mtime = 0;  // seconds since 1970; a time before 1970 is stored in two's complement, as EROFS does
  uint32_t mtime_nsec = 0;
  uint64_t size = 0;                   // regular files: content bytes; others: set by the writer
  uint32_t dev_major = 0, dev_minor = 0;  // character and block devices
  std::string symlink_target;
  // Full names ("user.x", "security.capability", "trusted.overlay.opaque"), sorted by name.
  std::vector<std::pair<std::string, std::string>> xattrs;
  std::vector<ChunkRef> chunks;  // regular files: ceil(size / chunk_size) chunks, in file order
  // Directories: entries other than "." and "..", sorted by name bytes, each naming an inode by
  // its index in Tree::inodes. A hardlinked file is one inode named by several entries.
  std::vector<std::pair<std::string, uint32_t>> children;
};

struct Tree {
  std::vector<Inode> inodes;  // inodes[0] is the root directory
};

// One blob table entry (RafsV6Blob).
struct BlobInfo {
  std::string blob_id;  // 64 lowercase hex chars: sha256 of the blob file
  uint32_t chunk_count = 0;
  Compressor compressor = Compressor::zstd;
  uint32_t features = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;  // 4 KiB-aligned end of the uncompressed chunk space
  uint32_t blob_toc_size = 0;      // 0: found by reading the blob's tail
  Compressor ci_compressor = Compressor::none;
  uint64_t ci_offset = 0;
  uint64_t ci_compressed_size = 0;
  uint64_t ci_uncompressed_size = 0;
  Digest blob_toc_digest{};  // all zero: not verified
};

struct Bootstrap {
  uint32_t chunk_size = kDefaultChunkSize;
  Compressor compressor = Compressor::zstd;  // the s_flags compression bit
  bool inlined_chunk_digest = false;         // every blob carries a chunk digest array
  std::vector<BlobInfo> blobs;
  Tree tree;
  // Paths loaded first ("/usr/bin/python3"), written as the prefetch table of inode numbers.
  // Paths missing from the tree are skipped. {"/"} means everything.
  std::vector<std::string> prefetch;
};

// Lays the bootstrap out: superblock, RAFS extended superblock, device and blob tables,
// prefetch table, inodes with inline xattrs and chunk addresses, directory blocks, symlink
// targets, chunk table. The size is a multiple of 4096. Throws ConvertError when the tree cannot
// be represented (too many blobs or chunks, an xattr prefix EROFS has no index for, a name over
// 255 bytes, an inode graph that is not a tree of directories).
std::string write_bootstrap(const Bootstrap& bootstrap);

// Parses and validates a bootstrap: every check nydusd makes when loading one (superblock magic
// and fixed fields, flags with exactly one compressor and one digester, extended superblock and
// table bounds, blob table entries and device slots, every inode's format, every directory's
// dirents and their order, every chunk address against the chunk table by (blob, ci index,
// block)) and the kernel's (inline data within its block). Throws ConvertError with a message
// naming the first fault and where it is ("inode 4096 (/usr/bin/ls): chunk 3 has no entry in
// the chunk table").
Bootstrap read_bootstrap(std::string_view bytes);

// Linux's new_encode_dev, as EROFS stores a device number.
uint32_t encode_dev(uint32_t major, uint32_t minor);

}  // namespace accel::convert::rafs
