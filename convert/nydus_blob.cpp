// Nydus data blob: writer (chunking, dedup, parallel compression, blob meta, TOC) and the
// readers that check a blob the way nydusd and nydus-image do. Layout: docs/formats/nydus.md
// and research nydus.md §1.4, §3.
#include "convert/nydus_blob.hpp"

#include <lz4.h>
#include <openssl/evp.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "convert/tar_format.hpp"

namespace accel::convert::nydus {

namespace {

using rafs::Compressor;
using rafs::Digest;
namespace bf = rafs::blob_feature;
namespace tf = tar_format;

// What the snapshotter's converter gives a per-layer blob (nydus.md §2.5).
constexpr uint32_t kBlobFeatures =
    bf::aligned | bf::inlined_fs_meta | bf::inlined_chunk_digest | bf::has_tar_header | bf::has_toc | bf::cap_tar_toc;
constexpr uint32_t kUnsupportedFeatures =
    bf::chunk_info_v2 | bf::zran | bf::tarfs | bf::batch | bf::encrypted | bf::external;

constexpr size_t kCiEntrySize = 16;
constexpr uint64_t kMaxCiSize = 256ull << 20;            // nydusd's v1 chunk-info array limit
constexpr uint32_t kMaxChunksPerBlob = 1u << 24;         // RAFS_MAX_CHUNKS_PER_BLOB
constexpr uint64_t kMaxCompressedOffset = 1ull << 40;    // 40 bits in chunk info v1
constexpr uint64_t kMaxUncompressedOffset = 1ull << 44;  // bits 12..43 in chunk info v1
constexpr uint64_t kMaxTocEntryContent = 1ull << 30;     // image.boot and friends, decompressed
constexpr size_t kMaxTocTail = 4096;

constexpr uint32_t kTocNone = 0x1, kTocZstd = 0x2, kTocLz4 = 0x4, kTocCompressionMask = 0xf;

constexpr const char* kEntryBlob = "image.blob";
constexpr const char* kEntryMeta = "blob.meta";
constexpr const char* kEntryMetaHeader = "blob.meta.header";
constexpr const char* kEntryDigest = "blob.digest";
constexpr const char* kEntryBoot = "image.boot";
constexpr const char* kEntryToc = "rafs.blob.toc";

uint64_t round_up_4k(uint64_t v) { return (v + 4095) & ~uint64_t{4095}; }

// ---- little-endian fields ----------------------------------------------------------------------

void put_u32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint32_t get_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// ---- sha256, raw 32 bytes ----------------------------------------------------------------------

const EVP_MD* sha256_md() {
  // Fetched once: the implicit fetch behind EVP_sha256() costs a lookup per digest.
  static const EVP_MD* md = [] {
    EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (!m) throw ConvertError("sha256: OpenSSL has no SHA256");
    return m;
  }();
  return md;
}

class RawSha256 {
 public:
  RawSha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_, sha256_md(), nullptr) != 1) {
      EVP_MD_CTX_free(ctx_);
      throw ConvertError("sha256: OpenSSL initialisation failed");
    }
  }
  ~RawSha256() { EVP_MD_CTX_free(ctx_); }
  RawSha256(const RawSha256&) = delete;
  RawSha256& operator=(const RawSha256&) = delete;
  void update(const void* data, size_t size) {
    if (size) EVP_DigestUpdate(ctx_, data, size);
  }
  // The digest of everything so far; the context starts over (reused: one context per thread
  // instead of one allocation per chunk).
  Digest finish() {
    Digest d{};
    unsigned len = 0;
    if (EVP_DigestFinal_ex(ctx_, d.data(), &len) != 1 || EVP_DigestInit_ex(ctx_, sha256_md(), nullptr) != 1)
      throw ConvertError("sha256: OpenSSL digest failed");
    return d;
  }
  // The digest of everything so far, hashing on: the digest of a prefix without a second pass.
  Digest peek() const {
    EVP_MD_CTX* copy = EVP_MD_CTX_new();
    Digest d{};
    unsigned len = 0;
    bool ok = copy && EVP_MD_CTX_copy_ex(copy, ctx_) == 1 && EVP_DigestFinal_ex(copy, d.data(), &len) == 1;
    EVP_MD_CTX_free(copy);
    if (!ok) throw ConvertError("sha256: OpenSSL digest failed");
    return d;
  }

 private:
  EVP_MD_CTX* ctx_;
};

Digest sha256(std::string_view data) {
  Digest d{};
  unsigned len = 0;
  if (EVP_Digest(data.data(), data.size(), d.data(), &len, sha256_md(), nullptr) != 1)
    throw ConvertError("sha256: OpenSSL digest failed");
  return d;
}

// ---- compression -------------------------------------------------------------------------------


// Room compress_into() may need for `size` bytes.
size_t compress_bound(Compressor c, size_t size) {
  if (c == Compressor::zstd) return ZSTD_compressBound(size);
  if (c == Compressor::lz4_block) {
    if (size > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) throw ConvertError("lz4: input too large");
    return static_cast<size_t>(LZ4_compressBound(static_cast<int>(size)));
  }
  return 0;
}

// Compresses `src` into `dst`, which has compress_bound(c, size) bytes of room; returns the
// compressed size, or 0 when the result is not strictly smaller (the data is then stored raw).
size_t compress_into(Compressor c, ZSTD_CCtx* cctx, int level, const char* src, size_t size, char* dst) {
  if (size == 0) return 0;
  const size_t bound = compress_bound(c, size);
  if (c == Compressor::zstd) {
    size_t n = cctx ? ZSTD_compressCCtx(cctx, dst, bound, src, size, level) : ZSTD_compress(dst, bound, src, size, level);
    if (ZSTD_isError(n)) throw ConvertError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    return n < size ? n : 0;
  }
  if (c == Compressor::lz4_block) {
    int n = LZ4_compress_default(src, dst, static_cast<int>(size), static_cast<int>(bound));
    if (n <= 0) throw ConvertError("lz4_block compression failed");
    return static_cast<size_t>(n) < size ? static_cast<size_t>(n) : 0;
  }
  return 0;
}

// compress_into() for the metadata regions: `dst` is resized to the bound.
size_t compress_to(Compressor c, ZSTD_CCtx* cctx, int level, const char* src, size_t size, std::string& dst) {
  if (size == 0) return 0;
  dst.resize(compress_bound(c, size));
  return compress_into(c, cctx, level, src, size, dst.data());
}

// `stored` -> exactly `size` bytes. The caller has capped `size`; the compressors' maximum
// expansion ratios add a second cap so a tiny input cannot make us allocate a huge buffer.
std::string decompress_exact(Compressor c, std::string_view stored, uint64_t size, const std::string& what) {
  auto wrong_size = [&] {
    return ConvertError(what + ": data does not decompress to " + std::to_string(size) + " bytes");
  };
  if (c == Compressor::none) {
    if (stored.size() != size) throw wrong_size();
    return std::string(stored);
  }
  if (c == Compressor::zstd) {
    // A zstd block header (3 B) plus one RLE byte expands to at most 128 KiB.
    if (size > (stored.size() + 1) * 32768) throw wrong_size();
    unsigned long long declared = ZSTD_getFrameContentSize(stored.data(), stored.size());
    if (declared == ZSTD_CONTENTSIZE_ERROR) throw ConvertError(what + ": not a zstd frame");
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != size &&
        ZSTD_findFrameCompressedSize(stored.data(), stored.size()) == stored.size())
      throw wrong_size();
    std::string out(size, '\0');
    size_t n = ZSTD_decompress(out.data(), out.size(), stored.data(), stored.size());
    if (ZSTD_isError(n)) {
      if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) throw wrong_size();
      throw ConvertError(what + ": corrupt zstd data (" + ZSTD_getErrorName(n) + ")");
    }
    if (n != size) throw wrong_size();
    return out;
  }
  if (c == Compressor::lz4_block) {
    // LZ4 expands at most about 255:1.
    if (size > (stored.size() + 1) * 256 || size > static_cast<uint64_t>(LZ4_MAX_INPUT_SIZE) ||
        stored.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE))
      throw wrong_size();
    std::string out(size, '\0');
    int n = LZ4_decompress_safe(stored.data(), out.data(), static_cast<int>(stored.size()), static_cast<int>(size));
    if (n < 0) throw ConvertError(what + ": corrupt lz4_block data or " + wrong_size().what());
    if (static_cast<uint64_t>(n) != size) throw wrong_size();
    return out;
  }
  throw ConvertError(what + ": unsupported compressor " + rafs::compressor_name(c));
}

uint32_t toc_flags(Compressor c) {
  switch (c) {
    case Compressor::none: return kTocNone;
    case Compressor::zstd: return kTocZstd;
    case Compressor::lz4_block: return kTocLz4;
    default: throw ConvertError(std::string("no TOC flag for compressor ") + rafs::compressor_name(c));
  }
}

// ---- GNU tar headers (written after their data) ------------------------------------------------

void put_octal(char* field, size_t field_size, uint64_t value) {
  // Zero-padded to field_size - 1 digits, NUL last (the Rust tar crate's layout).
  for (size_t i = field_size - 1; i-- > 0;) {
    field[i] = static_cast<char>('0' + (value & 7));
    value >>= 3;
  }
  field[field_size - 1] = '\0';
}

std::string tar_header(std::string_view name, uint64_t size) {
  std::string block(tf::kBlockSize, '\0');
  std::memcpy(block.data() + tf::kName.offset, name.data(), std::min(name.size(), tf::kName.size));
  char* size_field = block.data() + tf::kSize.offset;
  if (size <= tf::max_octal(tf::kSize.size)) {
    put_octal(size_field, tf::kSize.size, size);
  } else {  // GNU base-256: marker bit, then big-endian
    for (size_t i = tf::kSize.size; i-- > 1; size >>= 8) size_field[i] = static_cast<char>(size & 0xff);
    size_field[0] = static_cast<char>(0x80);
  }
  block[tf::kTypeflag.offset] = '0';
  std::memcpy(block.data() + tf::kMagic.offset, tf::kMagicGnu.data(), tf::kMagicGnu.size());
  std::memcpy(block.data() + tf::kVersion.offset, tf::kVersionGnu.data(), tf::kVersionGnu.size());
  auto sums = tf::compute_checksums(block.data());
  put_octal(block.data() + tf::kChecksum.offset, tf::kChecksum.size, static_cast<uint64_t>(sums.unsigned_sum));
  return block;
}

// Octal as Go and GNU tar read it: surrounding spaces and NULs ignored. false when malformed.
bool parse_octal(const char* field, size_t size, uint64_t& out) {
  size_t b = 0, e = size;
  while (b < e && (field[b] == ' ' || field[b] == '\0')) ++b;
  while (e > b && (field[e - 1] == ' ' || field[e - 1] == '\0')) --e;
  if (b == e) return false;
  uint64_t v = 0;
  for (size_t i = b; i < e; ++i) {
    if (field[i] < '0' || field[i] > '7' || v >> 61) return false;
    v = (v << 3) | static_cast<uint64_t>(field[i] - '0');
  }
  out = v;
  return true;
}

bool parse_size_field(const char* field, uint64_t& out) {
  if (static_cast<unsigned char>(field[0]) & 0x80) {  // base-256
    if (field[0] != static_cast<char>(0x80)) return false;
    uint64_t v = 0;
    for (size_t i = 1; i < tf::kSize.size; ++i) {
      if (v >> 56) return false;
      v = (v << 8) | static_cast<unsigned char>(field[i]);
    }
    out = v;
    return true;
  }
  return parse_octal(field, tf::kSize.size, out);
}

// Checks the TOC's tar header; returns its size field.
uint64_t check_toc_header(const char* block) {
  std::string_view magic(block + tf::kMagic.offset, tf::kMagic.size);
  std::string_view version(block + tf::kVersion.offset, tf::kVersion.size);
  if (magic != tf::kMagicGnu || version != tf::kVersionGnu)
    throw ConvertError("blob TOC: the last tar header is not a GNU tar header");
  uint64_t checksum = 0;
  if (!parse_octal(block + tf::kChecksum.offset, tf::kChecksum.size, checksum))
    throw ConvertError("blob TOC: malformed tar header checksum");
  auto sums = tf::compute_checksums(block);
  if (checksum != static_cast<uint64_t>(sums.unsigned_sum) && static_cast<int64_t>(checksum) != sums.signed_sum)
    throw ConvertError("blob TOC: tar header checksum mismatch");
  char type = block[tf::kTypeflag.offset];
  if (type != '0' && type != '\0') throw ConvertError("blob TOC: tar header is not a regular file");
  std::string_view name(block, tf::kName.size);
  name = name.substr(0, name.find('\0'));
  if (name != kEntryToc)
    throw ConvertError("blob TOC: last tar header is named \"" + std::string(name) + "\", not rafs.blob.toc");
  uint64_t size = 0;
  if (!parse_size_field(block + tf::kSize.offset, size)) throw ConvertError("blob TOC: malformed tar header size");
  return size;
}

// ---- chunk info v1 (nydus.md §3.2) -------------------------------------------------------------

void encode_ci(char* p, const ChunkInfo& c) {
  uint64_t u = c.uncompressed_size - 1, s = c.compressed_size - 1;
  uint64_t uncomp = ((u & 0xfffff) << 44) | (c.uncompressed_offset & 0xfff'ffff'f000ull) | (((u >> 20) & 0xf) << 8);
  uint64_t comp = ((s & 0xfffff) << 44) | (((s >> 20) & 0xf) << 40) | (c.compressed_offset & 0xff'ffff'ffffull);
  put_u64(p, uncomp);
  put_u64(p + 8, comp);
}

ChunkInfo decode_ci(const char* p) {
  uint64_t uncomp = get_u64(p), comp = get_u64(p + 8);
  ChunkInfo c;
  c.uncompressed_offset = uncomp & 0xfff'ffff'f000ull;
  c.uncompressed_size = static_cast<uint32_t>(((uncomp >> 44) | (((uncomp >> 8) & 0xf) << 20)) + 1);
  c.compressed_offset = comp & 0xff'ffff'ffffull;
  c.compressed_size = static_cast<uint32_t>(((comp >> 44) | (((comp >> 40) & 0xf) << 20)) + 1);
  return c;
}

// ---- blob meta header (nydus.md §3.1) ----------------------------------------------------------

std::string encode_meta_header(const rafs::BlobInfo& b) {
  std::string h(kBlobMetaHeaderSize, '\0');
  put_u32(h.data() + 0, kBlobMetaMagic);
  put_u32(h.data() + 4, b.features);
  put_u32(h.data() + 8, static_cast<uint32_t>(b.ci_compressor));
  put_u32(h.data() + 12, b.chunk_count);
  put_u64(h.data() + 16, b.ci_offset);
  put_u64(h.data() + 24, b.ci_compressed_size);
  put_u64(h.data() + 32, b.ci_uncompressed_size);
  put_u32(h.data() + 4092, kBlobMetaMagic);
  return h;
}

// ---- TOC entries (nydus.md §1.4) ---------------------------------------------------------------

void encode_toc_entry(char* p, const TocEntry& e) {
  std::memset(p, 0, kTocEntrySize);
  put_u32(p, e.flags);
  std::memcpy(p + 8, e.name.data(), std::min<size_t>(e.name.size(), 16));
  std::memcpy(p + 24, e.uncompressed_digest.data(), 32);
  put_u64(p + 56, e.compressed_offset);
  put_u64(p + 64, e.compressed_size);
  put_u64(p + 72, e.uncompressed_size);
}

TocEntry decode_toc_entry(const char* p, size_t index, uint64_t blob_size) {
  TocEntry e;
  e.flags = get_u32(p);
  std::string_view name(p + 8, 16);
  e.name = std::string(name.substr(0, name.find('\0')));
  std::memcpy(e.uncompressed_digest.data(), p + 24, 32);
  e.compressed_offset = get_u64(p + 56);
  e.compressed_size = get_u64(p + 64);
  e.uncompressed_size = get_u64(p + 72);
  std::string where = "blob TOC entry " + std::to_string(index) + " (" + e.name + ")";
  // nydus-image reads the flags as a bit set of exactly these values.
  if (e.flags != kTocNone && e.flags != kTocZstd && e.flags != kTocLz4)
    throw ConvertError(where + ": unknown flags " + std::to_string(e.flags));
  if (e.compressed_offset > blob_size || e.compressed_size > blob_size - e.compressed_offset)
    throw ConvertError(where + ": data lies outside the blob");
  return e;
}

Compressor toc_compressor(uint32_t flags) {
  switch (flags & kTocCompressionMask) {
    case kTocNone: return Compressor::none;
    case kTocZstd: return Compressor::zstd;
    case kTocLz4: return Compressor::lz4_block;
  }
  throw ConvertError("blob TOC entry: unknown compression flags");
}

// ---- blob meta parsing -------------------------------------------------------------------------

struct ParsedMeta {
  std::string ci;  // uncompressed chunk-info array
  std::string_view header;
  std::vector<ChunkInfo> chunks;
};

void check_meta_entry(const rafs::BlobInfo& e) {
  if (e.chunk_count == 0 || e.chunk_count > kMaxChunksPerBlob)
    throw ConvertError("blob meta: invalid chunk count " + std::to_string(e.chunk_count));
  if (e.features & kUnsupportedFeatures)
    throw ConvertError("blob meta: unsupported blob features (chunk info v2, zran, batch, tarfs, encryption)");
  if (!(e.features & bf::aligned)) throw ConvertError("blob meta: blob is not ALIGNED");
  if (e.ci_uncompressed_size != uint64_t{e.chunk_count} * kCiEntrySize)
    throw ConvertError("blob meta: chunk-info size " + std::to_string(e.ci_uncompressed_size) + " is not " +
                       std::to_string(e.chunk_count) + " * 16");
  if (e.ci_uncompressed_size > kMaxCiSize) throw ConvertError("blob meta: chunk-info array over 256 MiB");
  if (e.ci_compressed_size > e.ci_uncompressed_size)
    throw ConvertError("blob meta: compressed chunk-info size exceeds its uncompressed size");
  if (e.ci_compressor == Compressor::none && e.ci_compressed_size != e.ci_uncompressed_size)
    throw ConvertError("blob meta: raw chunk-info array with differing sizes");
  if (e.uncompressed_size > kMaxUncompressedOffset) throw ConvertError("blob meta: uncompressed size too large");
}

void check_meta_header(std::string_view h, const rafs::BlobInfo& e) {
  const char* p = h.data();
  if (get_u32(p) != kBlobMetaMagic || get_u32(p + 4092) != kBlobMetaMagic)
    throw ConvertError("blob meta header: bad magic");
  // nydusd ignores s_features; we compare it except INLINED_FS_META, which a merged
  // bootstrap's blob table clears while the header in the blob keeps it.
  if ((get_u32(p + 4) | bf::inlined_fs_meta) != (e.features | bf::inlined_fs_meta))
    throw ConvertError("blob meta header: features differ from the blob table's");
  if (get_u32(p + 8) != static_cast<uint32_t>(e.ci_compressor))
    throw ConvertError("blob meta header: chunk-info compressor differs from the blob table's");
  if (get_u32(p + 12) != e.chunk_count)
    throw ConvertError("blob meta header: entry count differs from the blob table's");
  if (get_u64(p + 16) != e.ci_offset)
    throw ConvertError("blob meta header: chunk-info offset differs from the blob table's");
  if (get_u64(p + 24) != e.ci_compressed_size || get_u64(p + 32) != e.ci_uncompressed_size)
    throw ConvertError("blob meta header: chunk-info sizes differ from the blob table's");
}

void check_chunks(const std::vector<ChunkInfo>& chunks, const rafs::BlobInfo& e) {
  // The chunk data ends where the "image.blob" tar header starts.
  uint64_t data_end = e.ci_offset;
  if (e.features & bf::separate) {
    data_end = e.compressed_size;
  } else if (e.features & bf::has_tar_header) {
    if (e.ci_offset < kTarHeaderSize)
      throw ConvertError("blob meta: chunk-info offset inside the image.blob tar header");
    data_end = e.ci_offset - kTarHeaderSize;
  }
  uint64_t uncompressed_end = round_up_4k(e.uncompressed_size);
  const ChunkInfo* prev = nullptr;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ChunkInfo& c = chunks[i];
    auto fault = [&](const std::string& what) {
      return ConvertError("blob meta: chunk " + std::to_string(i) + ": " + what);
    };
    if (c.uncompressed_size == 0) throw fault("zero size");
    if (c.compressed_offset + c.compressed_size > data_end)
      throw fault("compressed data past the end of the chunk data");
    if (c.uncompressed_offset + c.uncompressed_size > uncompressed_end)
      throw fault("uncompressed end past the blob's uncompressed size");
    if (!c.compressed() && c.compressed_size != c.uncompressed_size) throw fault("raw chunk with differing sizes");
    if (c.uncompressed_offset % rafs::kBlockSize) throw fault("uncompressed offset not 4 KiB aligned");
    if (prev) {
      if (c.uncompressed_offset < prev->uncompressed_offset + prev->uncompressed_size)
        throw fault("uncompressed offsets not increasing");
      if (c.compressed_offset < prev->compressed_offset + prev->compressed_size)
        throw fault("compressed offsets not increasing");
    }
    prev = &c;
  }
}

ParsedMeta parse_meta(std::string_view region, const rafs::BlobInfo& e) {
  check_meta_entry(e);
  if (region.size() != e.ci_compressed_size + kBlobMetaHeaderSize)
    throw ConvertError("blob meta: region is " + std::to_string(region.size()) + " bytes, expected " +
                       std::to_string(e.ci_compressed_size + kBlobMetaHeaderSize));
  ParsedMeta m;
  m.header = region.substr(e.ci_compressed_size);
  check_meta_header(m.header, e);
  m.ci = decompress_exact(e.ci_compressor, region.substr(0, e.ci_compressed_size), e.ci_uncompressed_size,
                          "blob meta chunk-info array");
  m.chunks.reserve(e.chunk_count);
  for (uint32_t i = 0; i < e.chunk_count; ++i) m.chunks.push_back(decode_ci(m.ci.data() + i * kCiEntrySize));
  check_chunks(m.chunks, e);
  return m;
}

// ---- writer internals --------------------------------------------------------------------------

struct DedupKey {
  Digest digest;
  uint32_t size;
  bool operator==(const DedupKey&) const = default;
};
struct DedupHash {
  size_t operator()(const DedupKey& k) const {
    uint64_t h;
    std::memcpy(&h, k.digest.data(), sizeof h);  // sha256 bytes are already uniform
    return static_cast<size_t>(h ^ k.size);
  }
};

// Chunks go to the workers in batches: one handoff per chunk (mutex, condvar, on 2 cores a
// context switch or two) cost more than hashing and compressing a file of a few KB. A batch is
// closed at kBatchBytes of raw data (a larger chunk travels alone) or kBatchChunks chunks.
constexpr size_t kBatchBytes = 512 << 10;
constexpr size_t kBatchChunks = 1024;

// Bytes that are read or compressed over, so unlike std::string::resize it does not zero them.
class Buffer {
 public:
  char* data() { return data_.get(); }
  const char* data() const { return data_.get(); }
  // At least `capacity` bytes; the contents are lost when it grows.
  void reserve(size_t capacity) {
    if (capacity <= capacity_) return;
    data_ = std::make_unique_for_overwrite<char[]>(capacity);
    capacity_ = capacity;
  }

 private:
  std::unique_ptr<char[]> data_;
  size_t capacity_ = 0;
};

struct BatchChunk {
  uint32_t file = 0, slot = 0;  // its ChunkRef is files[file][slot]
  uint32_t size = 0;            // raw bytes, at raw_offset in the batch
  uint32_t raw_offset = 0;
  uint64_t file_offset = 0;
  // Set by the worker:
  Digest digest{};
  uint32_t packed_offset = 0, packed_size = 0;  // compressed bytes; packed_size 0: store raw
  bool known = false;  // already stored when the worker looked, so not compressed
  // Set when written:
  uint32_t index = 0;  // in the chunk table
};

struct Batch {
  Buffer raw, packed;
  size_t raw_size = 0;
  std::vector<BatchChunk> chunks;
  std::exception_ptr error;  // from hashing or compressing
  bool done = false;         // hashed and compressed
};

struct StoredChunk {
  ChunkInfo info;
  Digest digest;
  uint64_t file_offset;
};

}  // namespace

// ---- BlobWriter ----------------------------------------------------------------------------------

// The caller's thread reads chunks into batches; the workers hash (sha256: the chunk digest
// and the dedup key) and compress them. Finished batches are then written strictly in
// submission order, one writer at a time: dedup, chunk indexes and offsets are decided there,
// in input order, so the bytes do not depend on the thread count or timing. Who writes (and
// hashes the blob) is whoever would otherwise idle: a worker that finds no batch to compress,
// or the caller's thread when it must wait for the in-flight window. So the reading, often
// the critical path, is not held up by writing, nor is compression when it is the bottleneck.
struct BlobWriter::Impl {
  ByteSink& out;
  BlobOptions options;
  size_t window;          // batches in flight, which bounds memory
  size_t batch_capacity;  // raw bytes a batch can hold: kBatchBytes, or one chunk

  // Shared with the workers, under mu.
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  std::deque<Batch*> pending;                   // waiting for a worker
  std::deque<std::unique_ptr<Batch>> inflight;  // submission order; the head is written next
  std::vector<std::unique_ptr<Batch>> written;  // for the caller's thread to take the indexes
  size_t unwritten = 0;                         // submitted and not yet in `written`
  bool writing = false;                         // a thread is writing
  std::exception_ptr failure;                   // the first error; nothing is written after it
  bool stopping = false;
  std::vector<std::thread> workers;

  // Stored chunks by (digest, size). Only the writer changes it, under dedup_mu; the workers
  // read it under dedup_mu to skip compressing chunks that will be dropped anyway.
  std::mutex dedup_mu;
  std::unordered_map<DedupKey, uint32_t, DedupHash> dedup;

  // The writing side: one thread at a time (`writing`; after close_data, the caller's).
  std::vector<StoredChunk> table;
  uint64_t position = 0;           // bytes written to `out`
  uint64_t next_uncompressed = 0;  // aligned end of the uncompressed space
  // Everything written: the blob's digest, and, taken at the image.blob header (the TOC quirk:
  // that entry's digest covers the chunk data and the header), the first TOC entry's.
  RawSha256 blob_hash;

  // Caller thread only.
  std::unique_ptr<Batch> filling;  // being filled, not yet submitted
  std::vector<std::unique_ptr<Batch>> spare;
  std::vector<std::vector<rafs::ChunkRef>> files;  // ci_index taken from written batches, the rest at close
  Digest blob_digest{};
  bool closed = false, finished = false;
  rafs::BlobInfo info;
  std::vector<TocEntry> toc;

  Impl(ByteSink& sink, const BlobOptions& opts) : out(sink), options(opts) {
    if (options.chunk_size < rafs::kMinChunkSize || options.chunk_size > rafs::kMaxChunkSize ||
        (options.chunk_size & (options.chunk_size - 1)))
      throw ConvertError("nydus blob: chunk size " + std::to_string(options.chunk_size) +
                         " is not a power of two between 4 KiB and 16 MiB");
    if (options.compressor != Compressor::none && options.compressor != Compressor::zstd &&
        options.compressor != Compressor::lz4_block)
      throw ConvertError(std::string("nydus blob: unsupported compressor ") + rafs::compressor_name(options.compressor));
    if (options.threads == 0) options.threads = 1;
    window = 2 * size_t{options.threads} + 2;
    batch_capacity = std::max<size_t>(kBatchBytes, options.chunk_size);
    // Workers even without compression: they hash the chunks.
    try {
      for (unsigned i = 0; i < options.threads; ++i) workers.emplace_back([this] { work(); });
    } catch (...) {
      stop_workers();  // the destructor does not run for a half-built object
      throw;
    }
  }

  ~Impl() { stop_workers(); }

  void stop_workers() {
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    work_cv.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
  }

  // Worker thread: hashes and compresses queued batches with its own contexts.
  void work() {
    ZSTD_CCtx* cctx = options.compressor == Compressor::zstd ? ZSTD_createCCtx() : nullptr;
    std::unique_ptr<RawSha256> hash;
    try {
      hash = std::make_unique<RawSha256>();
    } catch (const std::exception&) {
      // reported with the first batch
    }
    std::unique_lock lock(mu);
    for (;;) {
      work_cv.wait(lock, [&] { return stopping || !pending.empty(); });
      if (stopping) break;
      Batch* batch = pending.front();
      pending.pop_front();
      lock.unlock();
      try {
        if (!hash) throw ConvertError("sha256: OpenSSL initialisation failed");
        if (options.compressor == Compressor::zstd && !cctx) throw ConvertError("zstd: cannot create a context");
        process(*batch, *hash, cctx);
      } catch (...) {
        batch->error = std::current_exception();
      }
      lock.lock();
      batch->done = true;
      if (pending.empty()) write_finished(lock);  // compressing comes first
      done_cv.notify_all();
    }
    ZSTD_freeCCtx(cctx);
  }

  // Writes finished batches at the head of the queue, in order, unless another thread is
  // already at it (that one rechecks the head under the lock before it stops: none is missed).
  void write_finished(std::unique_lock<std::mutex>& lock) {
    if (writing) return;
    writing = true;
    while (!failure && !stopping && !inflight.empty() && inflight.front()->done) {
      auto batch = std::move(inflight.front());
      inflight.pop_front();
      lock.unlock();
      std::exception_ptr error = batch->error;
      if (!error) {
        try {
          write_batch(*batch);
        } catch (...) {
          error = std::current_exception();
        }
      }
      lock.lock();
      if (error) failure = error;
      written.push_back(std::move(batch));
      --unwritten;
      done_cv.notify_all();
    }
    writing = false;
  }

  void process(Batch& batch, RawSha256& hash, ZSTD_CCtx* cctx) {
    const Compressor c = options.compressor;
    if (c != Compressor::none) {
      size_t room = 0;
      for (const auto& chunk : batch.chunks) room += compress_bound(c, chunk.size);
      batch.packed.reserve(room);
    }
    size_t packed_end = 0;
    for (auto& chunk : batch.chunks) {
      const char* raw = batch.raw.data() + chunk.raw_offset;
      hash.update(raw, chunk.size);
      chunk.digest = hash.finish();
      if (c == Compressor::none) continue;
      {
        std::lock_guard lock(dedup_mu);
        chunk.known = dedup.contains(DedupKey{chunk.digest, chunk.size});
      }
      if (chunk.known) continue;
      size_t n = compress_into(c, cctx, options.level, raw, chunk.size, batch.packed.data() + packed_end);
      chunk.packed_offset = static_cast<uint32_t>(packed_end);
      chunk.packed_size = static_cast<uint32_t>(n);
      packed_end += n;
    }
  }

  void write(const void* data, size_t size) {
    out.write(data, size);
    blob_hash.update(data, size);
    position += size;
  }

  std::unique_ptr<Batch> take_batch() {
    std::unique_ptr<Batch> batch;
    if (spare.empty()) {
      batch = std::make_unique<Batch>();
      batch->raw.reserve(batch_capacity);
    } else {
      batch = std::move(spare.back());
      spare.pop_back();
    }
    batch->raw_size = 0;
    batch->chunks.clear();
    batch->error = nullptr;
    batch->done = false;
    return batch;
  }

  // Until at most `keep` batches are unwritten (keep 0: all written), writes finished ones or
  // waits; then takes the chunk indexes of the written ones and recycles them. Rethrows a
  // worker's error.
  void flush(size_t keep) {
    std::vector<std::unique_ptr<Batch>> done;
    {
      std::unique_lock lock(mu);
      while (!failure && unwritten > keep) {
        if (!writing && inflight.front()->done) {
          write_finished(lock);
        } else {
          done_cv.wait(lock);
        }
      }
      if (failure) std::rethrow_exception(failure);
      done.swap(written);
    }
    for (auto& batch : done) {
      for (const auto& chunk : batch->chunks) files[chunk.file][chunk.slot].ci_index = chunk.index;
      spare.push_back(std::move(batch));
    }
  }

  // Dedup, chunk indexes and offsets, in input order: as if each chunk were added on its own.
  void write_batch(Batch& batch) {
    for (auto& chunk : batch.chunks) {
      auto it = dedup.find(DedupKey{chunk.digest, chunk.size});
      chunk.index = it != dedup.end() ? it->second : store_chunk(batch, chunk);
    }
  }

  // A chunk seen for the first time: its index, offsets and bytes.
  uint32_t store_chunk(const Batch& batch, const BatchChunk& chunk) {
    if (chunk.known) throw ConvertError("nydus blob: internal error: chunk skipped as stored, but it is not");
    if (table.size() >= kMaxChunksPerBlob) throw ConvertError("nydus blob: more than 2^24 chunks");
    if (next_uncompressed + round_up_4k(chunk.size) > kMaxUncompressedOffset)
      throw ConvertError("nydus blob: uncompressed size exceeds 16 TiB (chunk info v1 limit)");
    std::string_view bytes = chunk.packed_size
                                 ? std::string_view(batch.packed.data() + chunk.packed_offset, chunk.packed_size)
                                 : std::string_view(batch.raw.data() + chunk.raw_offset, chunk.size);
    if (position + bytes.size() > kMaxCompressedOffset)
      throw ConvertError("nydus blob: chunk data exceeds 1 TiB (chunk info v1 limit)");
    uint32_t index = static_cast<uint32_t>(table.size());
    StoredChunk c{};
    c.info.uncompressed_offset = next_uncompressed;
    c.info.uncompressed_size = chunk.size;
    c.info.compressed_offset = position;
    c.info.compressed_size = static_cast<uint32_t>(bytes.size());
    c.digest = chunk.digest;
    c.file_offset = chunk.file_offset;
    table.push_back(c);
    {
      std::lock_guard lock(dedup_mu);
      dedup.emplace(DedupKey{chunk.digest, chunk.size}, index);
    }
    next_uncompressed += round_up_4k(chunk.size);
    write(bytes.data(), bytes.size());
    return index;
  }

  void submit() {
    if (!filling) return;
    {
      std::lock_guard lock(mu);
      pending.push_back(filling.get());
      inflight.push_back(std::move(filling));
      ++unwritten;
    }
    work_cv.notify_one();
    flush(window);
  }

  // Reads one chunk of files[file] into the batch being filled.
  void add_chunk(ByteSource& content, uint32_t file, uint64_t file_offset, uint32_t length, uint64_t file_size) {
    if (filling && (filling->raw_size + length > kBatchBytes || filling->chunks.size() >= kBatchChunks)) submit();
    if (!filling) filling = take_batch();
    Batch& batch = *filling;
    char* dst = batch.raw.data() + batch.raw_size;  // room: batch_capacity >= kBatchBytes, chunk_size
    for (size_t got = 0; got < length;) {
      size_t n = content.read(dst + got, length - got);
      if (n == 0)
        throw ConvertError("nydus blob: file content ends after " + std::to_string(file_offset + got) + " of " +
                           std::to_string(file_size) + " bytes");
      got += n;
    }
    BatchChunk chunk;
    chunk.file = file;
    chunk.slot = static_cast<uint32_t>(files[file].size());
    chunk.size = length;
    chunk.raw_offset = static_cast<uint32_t>(batch.raw_size);
    chunk.file_offset = file_offset;
    batch.chunks.push_back(chunk);
    batch.raw_size += length;
    rafs::ChunkRef ref;
    ref.uncompressed_size = length;
    files[file].push_back(ref);
    if (batch.raw_size >= kBatchBytes) submit();  // full: no need to wait for the next chunk
  }

  uint32_t add_file(ByteSource& content, uint64_t size) {
    if (closed) throw ConvertError("nydus blob: add_file after close_data");
    uint32_t file = static_cast<uint32_t>(files.size());
    files.emplace_back().reserve(
        static_cast<size_t>(std::min<uint64_t>((size + options.chunk_size - 1) / options.chunk_size, 1 << 20)));
    for (uint64_t offset = 0; offset < size; offset += options.chunk_size) {
      uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(options.chunk_size, size - offset));
      add_chunk(content, file, offset, length, size);
    }
    return file;
  }

  void add_toc(const char* name, Compressor c, const Digest& digest, uint64_t offset, uint64_t csize, uint64_t usize) {
    TocEntry e;
    e.name = name;
    e.flags = toc_flags(c);
    e.uncompressed_digest = digest;
    e.compressed_offset = offset;
    e.compressed_size = csize;
    e.uncompressed_size = usize;
    toc.push_back(std::move(e));
  }

  // Writes `data` followed by its tar header.
  void write_region(const char* name, std::string_view data) {
    write(data.data(), data.size());
    std::string header = tar_header(name, data.size());
    write(header.data(), header.size());
  }

  rafs::BlobInfo close_data() {
    if (closed) throw ConvertError("nydus blob: close_data called twice");
    submit();
    flush(0);
    stop_workers();
    closed = true;
    spare.clear();

    info = rafs::BlobInfo{};
    info.blob_id = std::string(rafs::kPlaceholderBlobId);
    info.chunk_count = static_cast<uint32_t>(table.size());
    info.compressor = options.compressor;
    info.features = kBlobFeatures;
    if (table.empty()) {
      // Like nydus-image: no data regions at all, and so no chunk digest array either.
      info.features &= ~bf::inlined_chunk_digest;
      return info;
    }
    fill_chunk_refs();
    info.uncompressed_size = next_uncompressed;

    // Region 1: the chunk data is out; its header closes it. The chunk data starts the blob, so
    // the TOC digest is that of everything written so far.
    uint64_t data_size = position;
    std::string blob_header = tar_header(kEntryBlob, data_size);
    write(blob_header.data(), blob_header.size());
    add_toc(kEntryBlob, Compressor::none, blob_hash.peek(), 0, data_size, info.uncompressed_size);

    write_blob_meta();
    write_chunk_digests();
    // Everything before image.boot: nydusd accepts end of chunk data <= this <= file size.
    info.compressed_size = position;
    return info;
  }

  void fill_chunk_refs() {
    for (auto& refs : files)
      for (auto& r : refs) {
        const StoredChunk& c = table[r.ci_index];
        r.uncompressed_offset = c.info.uncompressed_offset;
        r.compressed_offset = c.info.compressed_offset;
        r.compressed_size = c.info.compressed_size;
        r.compressed = c.info.compressed();
        r.digest = c.digest;
        r.file_offset = c.file_offset;  // the first file's, for a duplicate too
      }
  }

  // Regions 2 and 3: chunk-info array and blob meta header, one tar entry.
  void write_blob_meta() {
    std::string ci(table.size() * kCiEntrySize, '\0');
    for (size_t i = 0; i < table.size(); ++i) encode_ci(ci.data() + i * kCiEntrySize, table[i].info);
    std::string packed;
    // zstd (or raw) even in an lz4_block blob: the snapshotter's Go tools read TOC entries
    // compressed with none or zstd only, and nydusd reads the array's own compressor.
    const Compressor ci_compressor = options.compressor == Compressor::none ? Compressor::none : Compressor::zstd;
    size_t packed_size = compress_to(ci_compressor, nullptr, 3, ci.data(), ci.size(), packed);
    std::string_view stored = packed_size ? std::string_view(packed.data(), packed_size) : std::string_view(ci);

    info.ci_compressor = packed_size ? ci_compressor : Compressor::none;
    info.ci_offset = position;
    info.ci_compressed_size = stored.size();
    info.ci_uncompressed_size = ci.size();
    std::string header = encode_meta_header(info);

    // One tar entry spans both: nydusd reads ci + header in a single request.
    write(stored.data(), stored.size());
    write(header.data(), header.size());
    std::string tar = tar_header(kEntryMeta, stored.size() + header.size());
    write(tar.data(), tar.size());
    add_toc(kEntryMeta, info.ci_compressor, sha256(ci), info.ci_offset, stored.size(), ci.size());
    add_toc(kEntryMetaHeader, Compressor::none, sha256(header), info.ci_offset + stored.size(), header.size(),
            header.size());
  }

  // Region 4: the chunk digests in chunk-index order, raw.
  void write_chunk_digests() {
    std::string digests;
    digests.reserve(table.size() * 32);
    for (const auto& c : table) digests.append(reinterpret_cast<const char*>(c.digest.data()), 32);
    uint64_t offset = position;
    write_region(kEntryDigest, digests);
    add_toc(kEntryDigest, Compressor::none, sha256(digests), offset, digests.size(), digests.size());
  }

  uint64_t finish(std::string_view bootstrap) {
    if (finished) throw ConvertError("nydus blob: finish called twice");
    if (!closed) close_data();
    finished = true;

    // Region 5: the per-layer bootstrap, zstd when smaller.
    int level = options.compressor == Compressor::zstd ? options.level : ZSTD_CLEVEL_DEFAULT;
    std::string packed;
    size_t packed_size = compress_to(Compressor::zstd, nullptr, level, bootstrap.data(), bootstrap.size(), packed);
    std::string_view stored = packed_size ? std::string_view(packed.data(), packed_size) : bootstrap;
    uint64_t offset = position;
    write_region(kEntryBoot, stored);
    add_toc(kEntryBoot, packed_size ? Compressor::zstd : Compressor::none, sha256(bootstrap), offset, stored.size(),
            bootstrap.size());

    // Region 6: the TOC.
    std::string entries(toc.size() * kTocEntrySize, '\0');
    for (size_t i = 0; i < toc.size(); ++i) encode_toc_entry(entries.data() + i * kTocEntrySize, toc[i]);
    write_region(kEntryToc, entries);
    blob_digest = blob_hash.finish();
    return position;
  }
};

BlobWriter::BlobWriter(ByteSink& out, const BlobOptions& options) : impl_(std::make_unique<Impl>(out, options)) {}
BlobWriter::~BlobWriter() = default;

uint32_t BlobWriter::add_file(ByteSource& content, uint64_t size) { return impl_->add_file(content, size); }

rafs::BlobInfo BlobWriter::close_data() { return impl_->close_data(); }

const std::vector<rafs::ChunkRef>& BlobWriter::chunks_of(uint32_t file) const {
  if (!impl_->closed) throw ConvertError("nydus blob: chunks_of before close_data");
  if (file >= impl_->files.size()) throw ConvertError("nydus blob: no file " + std::to_string(file));
  return impl_->files[file];
}

uint64_t BlobWriter::finish(std::string_view bootstrap) { return impl_->finish(bootstrap); }

std::string BlobWriter::digest() const {
  if (!impl_->finished) throw ConvertError("nydus blob: digest before finish");
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned char b : impl_->blob_digest) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

// ---- reading -------------------------------------------------------------------------------------

uint64_t toc_tail_size(uint64_t blob_size) {
  return std::min<uint64_t>(blob_size / kTocEntrySize * kTocEntrySize, kMaxTocTail);
}

std::vector<TocEntry> parse_toc(std::string_view tail, uint64_t blob_size) {
  if (tail.size() < kTarHeaderSize || tail.size() > blob_size || tail.size() > kMaxTocTail)
    throw ConvertError("blob TOC: tail of " + std::to_string(tail.size()) + " bytes cannot hold a TOC");
  size_t room = tail.size() - kTarHeaderSize;
  uint64_t size = check_toc_header(tail.data() + room);
  if (size == 0 || size % kTocEntrySize || size > room)
    throw ConvertError("blob TOC: invalid size " + std::to_string(size) + " in the rafs.blob.toc header");
  std::vector<TocEntry> toc;
  size_t first = room - static_cast<size_t>(size);
  for (size_t pos = first; pos < room; pos += kTocEntrySize)
    toc.push_back(decode_toc_entry(tail.data() + pos, toc.size(), blob_size));
  return toc;
}

const TocEntry* find_toc_entry(const std::vector<TocEntry>& toc, std::string_view name) {
  for (const auto& e : toc)
    if (e.name == name) return &e;
  return nullptr;
}

std::string extract_toc_entry(const TocEntry& entry, std::string_view stored) {
  std::string what = "blob TOC entry " + entry.name;
  if (stored.size() != entry.compressed_size)
    throw ConvertError(what + ": " + std::to_string(stored.size()) + " bytes given, entry says " +
                       std::to_string(entry.compressed_size));
  if (entry.uncompressed_size > kMaxTocEntryContent) throw ConvertError(what + ": uncompressed size over 1 GiB");
  Compressor c = toc_compressor(entry.flags);
  if (c == Compressor::none && entry.compressed_size != entry.uncompressed_size)
    throw ConvertError(what + ": uncompressed entry with differing sizes");
  std::string content = decompress_exact(c, stored, entry.uncompressed_size, what);
  if (sha256(content) != entry.uncompressed_digest) throw ConvertError(what + ": sha256 mismatch");
  return content;
}

std::vector<ChunkInfo> parse_blob_meta(std::string_view region, const rafs::BlobInfo& entry) {
  return parse_meta(region, entry).chunks;
}

std::string blob_meta_cache_file(std::string_view region, const rafs::BlobInfo& entry) {
  ParsedMeta m = parse_meta(region, entry);
  std::string file = std::move(m.ci);
  file.resize(round_up_4k(file.size()), '\0');
  file.append(m.header);
  return file;
}

std::string decompress_chunk(Compressor compressor, std::string_view stored, uint32_t uncompressed_size) {
  if (uncompressed_size == 0 || uncompressed_size > rafs::kMaxChunkSize)
    throw ConvertError("chunk: invalid uncompressed size " + std::to_string(uncompressed_size));
  // A chunk stored raw is raw whatever the blob's compressor.
  if (stored.size() == uncompressed_size) return std::string(stored);
  if (compressor == Compressor::none)
    throw ConvertError("chunk data does not decompress to " + std::to_string(uncompressed_size) + " bytes");
  return decompress_exact(compressor, stored, uncompressed_size, "chunk");
}

}  // namespace accel::convert::nydus
