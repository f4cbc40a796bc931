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
  Digest finish() {
    Digest d{};
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx_, d.data(), &len);
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

const char* name_of(Compressor c) {
  switch (c) {
    case Compressor::none: return "none";
    case Compressor::lz4_block: return "lz4_block";
    case Compressor::gzip: return "gzip";
    case Compressor::zstd: return "zstd";
  }
  return "unknown";
}

// Compresses `src` into `dst` (resized to the compressor's bound); returns the compressed size,
// or 0 when the result is not strictly smaller (the data is then stored raw).
size_t compress_to(Compressor c, ZSTD_CCtx* cctx, int level, const char* src, size_t size, std::string& dst) {
  if (size == 0) return 0;
  if (c == Compressor::zstd) {
    dst.resize(ZSTD_compressBound(size));
    size_t n = cctx ? ZSTD_compressCCtx(cctx, dst.data(), dst.size(), src, size, level)
                    : ZSTD_compress(dst.data(), dst.size(), src, size, level);
    if (ZSTD_isError(n)) throw ConvertError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    return n < size ? n : 0;
  }
  if (c == Compressor::lz4_block) {
    if (size > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) throw ConvertError("lz4: input too large");
    dst.resize(static_cast<size_t>(LZ4_compressBound(static_cast<int>(size))));
    int n = LZ4_compress_default(src, dst.data(), static_cast<int>(size), static_cast<int>(dst.size()));
    if (n <= 0) throw ConvertError("lz4_block compression failed");
    return static_cast<size_t>(n) < size ? static_cast<size_t>(n) : 0;
  }
  return 0;
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
  throw ConvertError(what + ": unsupported compressor " + name_of(c));
}

uint32_t toc_flags(Compressor c) {
  switch (c) {
    case Compressor::none: return kTocNone;
    case Compressor::zstd: return kTocZstd;
    case Compressor::lz4_block: return kTocLz4;
    default: throw ConvertError(std::string("no TOC flag for compressor ") + name_of(c));
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

// One stored chunk on its way through the compression workers.
struct Job {
  std::string raw;     // the chunk's bytes (raw.size() == its length)
  std::string packed;  // compressed bytes, valid when packed_size > 0
  size_t packed_size = 0;
  uint32_t ci_index = 0;
  std::string error;
  bool done = false;
};

struct StoredChunk {
  ChunkInfo info;
  Digest digest;
  uint64_t file_offset;
};

}  // namespace

// ---- BlobWriter ----------------------------------------------------------------------------------

struct BlobWriter::Impl {
  ByteSink& out;
  BlobOptions options;
  size_t window;

  // Shared with the workers.
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  std::deque<Job*> pending;                   // waiting for a worker
  std::deque<std::unique_ptr<Job>> inflight;  // submission order; the head is written next
  bool stopping = false;
  std::vector<std::thread> workers;

  // Caller thread only.
  std::vector<std::unique_ptr<Job>> spare;
  std::vector<StoredChunk> table;
  std::unordered_map<DedupKey, uint32_t, DedupHash> dedup;
  std::vector<std::vector<rafs::ChunkRef>> files;
  uint64_t position = 0;           // bytes written to `out`
  uint64_t next_uncompressed = 0;  // aligned end of the uncompressed space
  RawSha256 data_hash;             // chunk bytes + the image.blob header (the TOC quirk)
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
      throw ConvertError(std::string("nydus blob: unsupported compressor ") + name_of(options.compressor));
    if (options.threads == 0) options.threads = 1;
    window = 2 * size_t{options.threads} + 2;
    if (options.compressor == Compressor::none) return;  // nothing to do off-thread
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

  // Worker thread: compresses queued chunks with its own context.
  void work() {
    ZSTD_CCtx* cctx = options.compressor == Compressor::zstd ? ZSTD_createCCtx() : nullptr;
    std::unique_lock lock(mu);
    for (;;) {
      work_cv.wait(lock, [&] { return stopping || !pending.empty(); });
      if (stopping) break;
      Job* job = pending.front();
      pending.pop_front();
      lock.unlock();
      try {
        if (options.compressor == Compressor::zstd && !cctx) throw ConvertError("zstd: cannot create a context");
        job->packed_size =
            compress_to(options.compressor, cctx, options.level, job->raw.data(), job->raw.size(), job->packed);
      } catch (const std::exception& e) {
        job->error = e.what();
      }
      lock.lock();
      job->done = true;
      done_cv.notify_all();
    }
    ZSTD_freeCCtx(cctx);
  }

  void write(const void* data, size_t size) {
    out.write(data, size);
    position += size;
  }

  std::unique_ptr<Job> take_job() {
    if (spare.empty()) return std::make_unique<Job>();
    auto job = std::move(spare.back());
    spare.pop_back();
    job->done = false;
    job->packed_size = 0;
    job->error.clear();
    return job;
  }

  // Writes finished chunks at the head of the queue, in order. Waits while more than
  // `keep` chunks are in flight (keep 0: everything).
  void flush(size_t keep) {
    std::unique_lock lock(mu);
    for (;;) {
      if (inflight.empty()) return;
      if (!inflight.front()->done) {
        if (inflight.size() <= keep) return;
        done_cv.wait(lock, [&] { return inflight.front()->done; });
      }
      auto job = std::move(inflight.front());
      inflight.pop_front();
      lock.unlock();
      write_chunk(*job);
      spare.push_back(std::move(job));
      lock.lock();
    }
  }

  void write_chunk(const Job& job) {
    StoredChunk& c = table[job.ci_index];
    if (!job.error.empty()) throw ConvertError("chunk " + std::to_string(job.ci_index) + ": " + job.error);
    std::string_view bytes =
        job.packed_size ? std::string_view(job.packed.data(), job.packed_size) : std::string_view(job.raw);
    if (position + bytes.size() > kMaxCompressedOffset)
      throw ConvertError("nydus blob: chunk data exceeds 1 TiB (chunk info v1 limit)");
    c.info.compressed_offset = position;
    c.info.compressed_size = static_cast<uint32_t>(bytes.size());
    data_hash.update(bytes.data(), bytes.size());
    write(bytes.data(), bytes.size());
  }

  void submit(std::unique_ptr<Job> job) {
    {
      std::lock_guard lock(mu);
      if (options.compressor == Compressor::none) {
        job->done = true;  // nothing to do off-thread
      } else {
        pending.push_back(job.get());
      }
      inflight.push_back(std::move(job));
    }
    work_cv.notify_one();
    flush(window);
  }

  // Reads one chunk of `file`, dedups it, queues it if new; returns its ChunkRef.
  rafs::ChunkRef add_chunk(ByteSource& content, uint64_t file_offset, uint32_t length, uint64_t file_size) {
    auto job = take_job();
    job->raw.resize(length);
    for (size_t got = 0; got < length;) {
      size_t n = content.read(job->raw.data() + got, length - got);
      if (n == 0)
        throw ConvertError("nydus blob: file content ends after " + std::to_string(file_offset + got) + " of " +
                           std::to_string(file_size) + " bytes");
      got += n;
    }
    // Hashing here, on the caller thread, makes the dedup decision in input order for free.
    DedupKey key{sha256(job->raw), length};
    rafs::ChunkRef ref;
    ref.uncompressed_size = length;
    ref.digest = key.digest;
    if (auto it = dedup.find(key); it != dedup.end()) {
      const StoredChunk& c = table[it->second];
      ref.ci_index = it->second;
      ref.uncompressed_offset = c.info.uncompressed_offset;
      ref.file_offset = c.file_offset;
      spare.push_back(std::move(job));
      return ref;
    }
    if (table.size() >= kMaxChunksPerBlob) throw ConvertError("nydus blob: more than 2^24 chunks");
    if (next_uncompressed + round_up_4k(length) > kMaxUncompressedOffset)
      throw ConvertError("nydus blob: uncompressed size exceeds 16 TiB (chunk info v1 limit)");
    uint32_t index = static_cast<uint32_t>(table.size());
    StoredChunk c{};
    c.info.uncompressed_offset = next_uncompressed;
    c.info.uncompressed_size = length;
    c.digest = key.digest;
    c.file_offset = file_offset;
    table.push_back(c);
    dedup.emplace(key, index);
    next_uncompressed += round_up_4k(length);
    ref.ci_index = index;
    ref.uncompressed_offset = c.info.uncompressed_offset;
    ref.file_offset = file_offset;
    job->ci_index = index;
    submit(std::move(job));
    return ref;
  }

  uint32_t add_file(ByteSource& content, uint64_t size) {
    if (closed) throw ConvertError("nydus blob: add_file after close_data");
    std::vector<rafs::ChunkRef> refs;
    refs.reserve(
        static_cast<size_t>(std::min<uint64_t>((size + options.chunk_size - 1) / options.chunk_size, 1 << 20)));
    for (uint64_t offset = 0; offset < size; offset += options.chunk_size) {
      uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(options.chunk_size, size - offset));
      refs.push_back(add_chunk(content, offset, length, size));
    }
    files.push_back(std::move(refs));
    return static_cast<uint32_t>(files.size() - 1);
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
    flush(0);
    stop_workers();
    closed = true;

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

    // Region 1: the chunk data is out; its header closes it.
    uint64_t data_size = position;
    std::string blob_header = tar_header(kEntryBlob, data_size);
    data_hash.update(blob_header.data(), blob_header.size());
    write(blob_header.data(), blob_header.size());
    add_toc(kEntryBlob, Compressor::none, data_hash.finish(), 0, data_size, info.uncompressed_size);

    write_blob_meta();
    write_chunk_digests();
    // Everything before image.boot: nydusd accepts end of chunk data <= this <= file size.
    info.compressed_size = position;
    return info;
  }

  void fill_chunk_refs() {
    for (auto& refs : files)
      for (auto& r : refs) {
        const ChunkInfo& c = table[r.ci_index].info;
        r.compressed_offset = c.compressed_offset;
        r.compressed_size = c.compressed_size;
        r.compressed = c.compressed();
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
