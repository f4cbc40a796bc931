// A Nydus data blob, the layer half of a Nydus image (RAFS v6, native, the layout
// nydus-snapshotter's converter produces with --blob-inline-meta and the blob TOC):
//
//   [chunk data][tar hdr "image.blob"]
//   [chunk-info array][4096 B blob meta header][tar hdr "blob.meta"]
//   [chunk digest array][tar hdr "blob.digest"]
//   [per-layer bootstrap][tar hdr "image.boot"]
//   [TOC: 128 B entries][tar hdr "rafs.blob.toc"]
//
// Writing streams: chunk data goes out as it is compressed (on `threads` threads, written in
// order, so the bytes do not depend on the thread count); only the chunk table (tens of bytes
// per chunk) stays in memory. Until close_data() returns, the sink may be written from those
// threads (one at a time), so it must not be tied to the caller's thread. Reading is for the merge step and `accel-proxy check`: the TOC,
// the blob meta and the chunks, each checked the way nydusd checks them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "convert/byte_source.hpp"
#include "convert/rafs_v6.hpp"

namespace accel::convert::nydus {

inline constexpr uint32_t kBlobMetaMagic = 0xB10BB10B;
inline constexpr size_t kBlobMetaHeaderSize = 4096;
inline constexpr size_t kTocEntrySize = 128;
inline constexpr size_t kTarHeaderSize = 512;

struct BlobOptions {
  uint32_t chunk_size = rafs::kDefaultChunkSize;
  rafs::Compressor compressor = rafs::Compressor::zstd;
  int level = 3;         // zstd's level; ignored by the other compressors
  unsigned threads = 1;  // compression threads; the output is the same for any value
};

class BlobWriter {
 public:
  BlobWriter(ByteSink& out, const BlobOptions& options);
  ~BlobWriter();
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;

  // Reads exactly `size` bytes of one file's content from `content` (fewer is a ConvertError),
  // cuts them into chunks at multiples of the chunk size and queues them for compression.
  // A chunk identical (sha256 and size) to one already in this blob is not stored again.
  // Returns a handle for chunks_of(). An empty file has no chunks.
  uint32_t add_file(ByteSource& content, uint64_t size);

  // Waits until every chunk is written and lays out the rest: returns the blob table entry the
  // bootstrap will carry (blob_id left as rafs::kPlaceholderBlobId, features including
  // INLINED_FS_META, since the per-layer bootstrap goes into the blob).
  rafs::BlobInfo close_data();

  // The file's chunks (blob_index 0), in file order. Valid after close_data().
  const std::vector<rafs::ChunkRef>& chunks_of(uint32_t file) const;

  // Writes the chunk-info array, the blob meta header, the chunk digest array, `bootstrap`
  // (the per-layer bootstrap, zstd-compressed when that is smaller) and the TOC, each followed
  // by its tar header. Returns the blob's total size.
  uint64_t finish(std::string_view bootstrap);

  // "sha256:<hex>" of everything written to the sink, the blob's digest. Valid after finish().
  std::string digest() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- reading ------------------------------------------------------------------------------

struct TocEntry {
  std::string name;  // "image.blob", "blob.meta", "blob.meta.header", "blob.digest", "image.boot"
  uint32_t flags = 0;  // compression: 0x1 none, 0x2 zstd, 0x4 lz4_block
  rafs::Digest uncompressed_digest{};
  uint64_t compressed_offset = 0, compressed_size = 0, uncompressed_size = 0;
};

// How many bytes from the blob's end hold the TOC and its header: min(size rounded down to a
// multiple of 128, 4096), as nydusd reads it.
uint64_t toc_tail_size(uint64_t blob_size);

// Parses the TOC from the blob's last toc_tail_size(blob_size) bytes: the final tar header must
// be "rafs.blob.toc" with a valid checksum, entries must lie inside the blob. Throws
// ConvertError naming the fault.
std::vector<TocEntry> parse_toc(std::string_view tail, uint64_t blob_size);
const TocEntry* find_toc_entry(const std::vector<TocEntry>& toc, std::string_view name);

// An entry's stored bytes -> its uncompressed content, checked against the entry's size and
// sha256. Throws ConvertError.
std::string extract_toc_entry(const TocEntry& entry, std::string_view stored);

struct ChunkInfo {
  uint64_t uncompressed_offset = 0;
  uint32_t uncompressed_size = 0;
  uint64_t compressed_offset = 0;
  uint32_t compressed_size = 0;
  bool compressed() const { return compressed_size != uncompressed_size; }
};

// Parses [ci_offset, ci_offset + ci_compressed_size + 4096) of a blob against its blob table
// entry the way nydusd does on first access: both header magics, header fields equal to the
// table's, the array decompressed to exactly chunk_count * 16 bytes (v1 entries), and every
// chunk in bounds (compressed end within the chunk data, uncompressed end within the 4 KiB-
// rounded uncompressed size, nonzero size, raw chunks with equal sizes, offsets sorted).
// Throws ConvertError naming the fault and the chunk.
std::vector<ChunkInfo> parse_blob_meta(std::string_view region, const rafs::BlobInfo& entry);

// The nydusd blob-meta cache file: the uncompressed chunk-info array zero-padded to 4 KiB, then
// the header (the optional image/<hex>.blob.meta files in a bootstrap layer).
std::string blob_meta_cache_file(std::string_view region, const rafs::BlobInfo& entry);

// One chunk's stored bytes -> its content. Throws ConvertError on corrupt data or a size other
// than `uncompressed_size`.
std::string decompress_chunk(rafs::Compressor compressor, std::string_view stored, uint32_t uncompressed_size);

}  // namespace accel::convert::nydus
