// Nydus data blobs: writer round trips through the readers for every compressor (dedup, raw
// chunks, empty files, short last chunks), byte-identical output for any thread count, the
// [data][tar header] tiling the Go converter walks, and corrupted inputs.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "convert/nydus_blob.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"

using namespace accel::convert;
using namespace accel::convert::nydus;
namespace rf = accel::convert::rafs;

namespace {

// --- inputs -------------------------------------------------------------------------------------

std::string random_bytes(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(size, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Compressible text that differs from chunk to chunk (so no accidental dedup).
std::string text_bytes(size_t size, uint64_t seed) {
  std::string s;
  std::mt19937_64 rng(seed);
  while (s.size() < size) s += "line " + std::to_string(rng() % 1000) + " of some fairly repetitive text\n";
  s.resize(size);
  return s;
}

constexpr uint32_t kChunk = 4096;

// empty, small, multi-chunk with a short last chunk, a copy of it (dedup), incompressible,
// and a file whose chunks repeat inside it.
std::vector<std::string> sample_files() {
  return {
      "",
      "hello, nydus\n",
      text_bytes(3 * kChunk + 1000, 1),
      text_bytes(3 * kChunk + 1000, 1),
      random_bytes(2 * kChunk + 17, 2),
      std::string(3 * kChunk, 'z'),
  };
}

// --- building -----------------------------------------------------------------------------------

struct Built {
  std::string blob;
  rf::BlobInfo info;
  std::vector<std::vector<rf::ChunkRef>> chunks;
  uint64_t total = 0;
};

Built build(const std::vector<std::string>& files, BlobOptions options, std::string_view bootstrap,
            size_t max_read = 1000) {
  StringSink sink;
  BlobWriter writer(sink, options);
  std::vector<uint32_t> handles;
  for (const auto& f : files) {
    MemorySource source(f, max_read);
    handles.push_back(writer.add_file(source, f.size()));
  }
  Built b;
  b.info = writer.close_data();
  for (uint32_t h : handles) b.chunks.push_back(writer.chunks_of(h));
  b.total = writer.finish(bootstrap);
  b.blob = std::move(sink.data);
  return b;
}

BlobOptions options_for(rf::Compressor c, unsigned threads = 2, uint32_t chunk = kChunk) {
  BlobOptions o;
  o.chunk_size = chunk;
  o.compressor = c;
  o.threads = threads;
  return o;
}

std::string bootstrap_bytes() { return text_bytes(3 * 4096, 9); }

std::vector<TocEntry> toc_of(const std::string& blob) {
  uint64_t tail = toc_tail_size(blob.size());
  return parse_toc(std::string_view(blob).substr(blob.size() - tail), blob.size());
}

std::string_view stored(const std::string& blob, const TocEntry& e) {
  return std::string_view(blob).substr(e.compressed_offset, e.compressed_size);
}

std::string_view meta_region(const std::string& blob, const rf::BlobInfo& info) {
  return std::string_view(blob).substr(info.ci_offset, info.ci_compressed_size + kBlobMetaHeaderSize);
}

rf::Digest raw_sha256(std::string_view data) {
  std::string hex = Sha256::of(data).substr(7);
  rf::Digest d{};
  for (size_t i = 0; i < 32; ++i) d[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return d;
}

// --- a minimal tar header reader for the layout walk ---------------------------------------------

struct Header {
  std::string name;
  uint64_t size = 0;
};

Header read_header(std::string_view block) {
  REQUIRE(block.size() == 512);
  Header h;
  h.name = std::string(block.substr(0, 100).substr(0, block.substr(0, 100).find('\0')));
  CHECK(block.substr(257, 8) == std::string_view("ustar  \0", 8));
  CHECK(block[156] == '0');
  CHECK(block.substr(100, 24) == std::string(24, '\0'));  // mode, uid, gid
  CHECK(block.substr(136, 12) == std::string(12, '\0'));  // mtime
  // Size: 11 octal digits and a NUL; checksum: 7 octal digits and a NUL.
  CHECK(block[135] == '\0');
  h.size = std::stoull(std::string(block.substr(124, 11)), nullptr, 8);
  CHECK(block[155] == '\0');
  uint64_t sum = 0;
  for (size_t i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(block[i]);
  CHECK(std::stoull(std::string(block.substr(148, 7)), nullptr, 8) == sum);
  return h;
}

// The Go converter's fallback: header at the end, its data right before it, and so on down to 0.
std::vector<Header> walk_back(const std::string& blob) {
  std::vector<Header> regions;
  uint64_t cur = blob.size();
  while (cur > 0) {
    REQUIRE(cur >= 512);
    Header h = read_header(std::string_view(blob).substr(cur - 512, 512));
    REQUIRE(h.size <= cur - 512);
    cur -= 512 + h.size;
    regions.push_back(h);
  }
  return regions;
}

// --- the full round trip check -------------------------------------------------------------------

void check_round_trip(const std::vector<std::string>& files, const Built& b, rf::Compressor compressor,
                      const std::string& bootstrap) {
  const std::string& blob = b.blob;
  REQUIRE(b.total == blob.size());

  // Blob table entry.
  CHECK(b.info.blob_id == rf::kPlaceholderBlobId);
  CHECK(b.info.compressor == compressor);
  CHECK(b.info.features == 0x70000023u);
  CHECK(b.info.uncompressed_size % 4096 == 0);
  CHECK(b.info.compressed_size <= blob.size());
  CHECK(b.info.ci_uncompressed_size == uint64_t{b.info.chunk_count} * 16);

  // Layout: the tar headers tile the file exactly.
  auto regions = walk_back(blob);
  REQUIRE(regions.size() == 5);
  CHECK(regions[0].name == "rafs.blob.toc");
  CHECK(regions[1].name == "image.boot");
  CHECK(regions[2].name == "blob.digest");
  CHECK(regions[3].name == "blob.meta");
  CHECK(regions[4].name == "image.blob");
  CHECK(regions[3].size == b.info.ci_compressed_size + 4096);
  CHECK(b.info.ci_offset == regions[4].size + 512);
  CHECK(b.info.compressed_size == blob.size() - regions[0].size - 512 - regions[1].size - 512);

  // TOC.
  auto toc = toc_of(blob);
  REQUIRE(toc.size() == 5);
  std::vector<std::string> names;
  for (const auto& e : toc) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"image.blob", "blob.meta", "blob.meta.header", "blob.digest", "image.boot"});

  const TocEntry* data = find_toc_entry(toc, "image.blob");
  REQUIRE(data);
  CHECK(data->flags == 0x1);
  CHECK(data->compressed_offset == 0);
  CHECK(data->compressed_size == regions[4].size);
  CHECK(data->uncompressed_size == b.info.uncompressed_size);
  CHECK(data->uncompressed_digest == raw_sha256(std::string_view(blob).substr(0, data->compressed_size + 512)));

  const TocEntry* boot = find_toc_entry(toc, "image.boot");
  REQUIRE(boot);
  CHECK(boot->flags == 0x2);  // zstd: the text bootstrap compresses
  CHECK(extract_toc_entry(*boot, stored(blob, *boot)) == bootstrap);

  const TocEntry* meta = find_toc_entry(toc, "blob.meta");
  const TocEntry* meta_header = find_toc_entry(toc, "blob.meta.header");
  REQUIRE(meta);
  REQUIRE(meta_header);
  CHECK(meta->compressed_offset == b.info.ci_offset);
  CHECK(meta->compressed_size == b.info.ci_compressed_size);
  std::string ci = extract_toc_entry(*meta, stored(blob, *meta));
  std::string header = extract_toc_entry(*meta_header, stored(blob, *meta_header));
  CHECK(header.size() == 4096);
  CHECK(meta_header->compressed_offset == b.info.ci_offset + b.info.ci_compressed_size);

  // Blob meta, the cache file, and every chunk.
  auto infos = parse_blob_meta(meta_region(blob, b.info), b.info);
  REQUIRE(infos.size() == b.info.chunk_count);
  std::string cache = blob_meta_cache_file(meta_region(blob, b.info), b.info);
  CHECK(cache.size() == (ci.size() + 4095) / 4096 * 4096 + 4096);
  CHECK(cache.substr(0, ci.size()) == ci);
  CHECK(cache.substr(cache.size() - 4096) == header);

  uint64_t expect_uoffset = 0;
  for (const auto& c : infos) {
    CHECK(c.uncompressed_offset == expect_uoffset);
    expect_uoffset += (c.uncompressed_size + 4095) / 4096 * 4096;
  }
  CHECK(b.info.uncompressed_size == expect_uoffset);

  const TocEntry* digests = find_toc_entry(toc, "blob.digest");
  REQUIRE(digests);
  std::string digest_array = extract_toc_entry(*digests, stored(blob, *digests));
  REQUIRE(digest_array.size() == 32 * infos.size());

  REQUIRE(b.chunks.size() == files.size());
  for (size_t f = 0; f < files.size(); ++f) {
    const auto& refs = b.chunks[f];
    CHECK(refs.size() == (files[f].size() + kChunk - 1) / kChunk);
    std::string rebuilt;
    for (const auto& r : refs) {
      INFO("file " << f << " ci " << r.ci_index);
      REQUIRE(r.ci_index < infos.size());
      const ChunkInfo& c = infos[r.ci_index];
      CHECK(r.blob_index == 0);
      CHECK(r.uncompressed_offset == c.uncompressed_offset);
      CHECK(r.uncompressed_size == c.uncompressed_size);
      CHECK(r.compressed_offset == c.compressed_offset);
      CHECK(r.compressed_size == c.compressed_size);
      CHECK(r.compressed == c.compressed());
      CHECK(std::memcmp(digest_array.data() + 32 * r.ci_index, r.digest.data(), 32) == 0);
      std::string content = decompress_chunk(
          compressor, std::string_view(blob).substr(c.compressed_offset, c.compressed_size), c.uncompressed_size);
      CHECK(raw_sha256(content) == r.digest);
      // The content at the chunk's first use is the same bytes.
      CHECK(r.file_offset % kChunk == 0);
      rebuilt += content;
    }
    CHECK(rebuilt == files[f]);
  }
}

}  // namespace

TEST_CASE("nydus blob round trip, every compressor", "[nydus_blob]") {
  auto files = sample_files();
  std::string bootstrap = bootstrap_bytes();
  for (auto c : {rf::Compressor::zstd, rf::Compressor::lz4_block, rf::Compressor::none}) {
    INFO("compressor " << static_cast<int>(c));
    Built b = build(files, options_for(c), bootstrap);
    check_round_trip(files, b, c, bootstrap);

    // Unique chunks: small 1, text 4, random 3, 'z' 1 (its three chunks are equal).
    CHECK(b.info.chunk_count == 9);
    // The copy reuses the original's chunks, including their first-use file offsets.
    REQUIRE(b.chunks[3].size() == b.chunks[2].size());
    for (size_t i = 0; i < b.chunks[2].size(); ++i) {
      CHECK(b.chunks[3][i].ci_index == b.chunks[2][i].ci_index);
      CHECK(b.chunks[3][i].compressed_offset == b.chunks[2][i].compressed_offset);
      CHECK(b.chunks[3][i].file_offset == i * kChunk);
    }
    const auto& zs = b.chunks[5];
    REQUIRE(zs.size() == 3);
    CHECK(zs[1].ci_index == zs[0].ci_index);
    CHECK(zs[2].ci_index == zs[0].ci_index);
    CHECK(zs[2].file_offset == 0);
    CHECK(b.chunks[0].empty());

    // Random data stays raw; text compresses unless the compressor is none.
    for (const auto& r : b.chunks[4]) CHECK_FALSE(r.compressed);
    CHECK(b.chunks[2][0].compressed == (c != rf::Compressor::none));
    CHECK(b.chunks[2].back().uncompressed_size == 1000);
    // ci compressed with the chunk compressor when that is smaller, else raw.
    if (c == rf::Compressor::none) CHECK(b.info.ci_compressor == rf::Compressor::none);
  }
}

TEST_CASE("nydus blob: larger chunks and reads of any size", "[nydus_blob]") {
  std::vector<std::string> files = {text_bytes(200000, 3), random_bytes(70000, 4), text_bytes(65536, 5)};
  std::string bootstrap = bootstrap_bytes();
  BlobOptions o = options_for(rf::Compressor::zstd, 3, 65536);
  Built a = build(files, o, bootstrap, 1);
  Built b = build(files, o, bootstrap, SIZE_MAX);
  CHECK(a.blob == b.blob);
  CHECK(a.info.chunk_count == 4 + 2 + 1);
  auto infos = parse_blob_meta(meta_region(a.blob, a.info), a.info);
  std::string content;
  for (const auto& r : a.chunks[0])
    content +=
        decompress_chunk(rf::Compressor::zstd, std::string_view(a.blob).substr(r.compressed_offset, r.compressed_size),
                         r.uncompressed_size);
  CHECK(content == files[0]);
  CHECK(infos[3].uncompressed_size == 200000 - 3 * 65536);
}

TEST_CASE("nydus blob output does not depend on the thread count", "[nydus_blob]") {
  std::vector<std::string> files = sample_files();
  for (int i = 0; i < 6; ++i) files.push_back(text_bytes(9 * kChunk + 123 * i, 10 + i));
  files.push_back(files[7]);
  std::string bootstrap = bootstrap_bytes();
  for (auto c : {rf::Compressor::zstd, rf::Compressor::lz4_block, rf::Compressor::none}) {
    Built one = build(files, options_for(c, 1), bootstrap);
    for (unsigned threads : {2u, 4u}) {
      INFO("compressor " << static_cast<int>(c) << " threads " << threads);
      Built many = build(files, options_for(c, threads), bootstrap);
      CHECK(many.blob == one.blob);
      CHECK(many.info.ci_offset == one.info.ci_offset);
      for (size_t f = 0; f < files.size(); ++f)
        for (size_t i = 0; i < one.chunks[f].size(); ++i)
          CHECK(many.chunks[f][i].ci_index == one.chunks[f][i].ci_index);
    }
    check_round_trip(files, one, c, bootstrap);
  }
}

// Many small files travel to the workers in batches, and the dedup decision is made when they
// are written: duplicates inside one batch and across batches, batches cut by size and by
// chunk count, all giving the same bytes for any thread count, with chunk indexes in order of
// first use.
TEST_CASE("nydus blob with many small files, duplicates and batches", "[nydus_blob]") {
  std::vector<std::string> files;
  for (int i = 0; i < 3000; ++i) {
    int seed = i % 500;  // the same seed gives the same size and content: a duplicate
    files.push_back(text_bytes(1 + static_cast<size_t>(seed) * 37 % 3000, seed));
    if (i % 100 == 0) files.push_back(text_bytes(5 * kChunk + 7, 1000 + i));  // full chunks between
  }
  for (int i = 0; i < 2500; ++i) files.push_back(std::string(1 + i % 8, static_cast<char>('a' + i % 3)));
  std::string bootstrap = bootstrap_bytes();
  for (auto c : {rf::Compressor::zstd, rf::Compressor::lz4_block, rf::Compressor::none}) {
    INFO("compressor " << static_cast<int>(c));
    Built one = build(files, options_for(c, 1), bootstrap, 100000);
    for (unsigned threads : {2u, 3u}) {
      Built many = build(files, options_for(c, threads), bootstrap, 100000);
      CHECK(many.blob == one.blob);
    }
    check_round_trip(files, one, c, bootstrap);
    uint32_t next = 0;
    std::map<std::string, uint32_t> index_of;
    for (size_t f = 0; f < files.size(); ++f) {
      if (files[f].size() > kChunk) continue;
      REQUIRE(one.chunks[f].size() == 1);
      uint32_t index = one.chunks[f][0].ci_index;
      auto [it, added] = index_of.emplace(files[f], index);
      CHECK(it->second == index);  // equal content, one chunk
      if (added) CHECK(index >= next);
      next = std::max(next, index + 1);
    }
    CHECK(one.info.chunk_count < files.size() / 2);
  }
}

TEST_CASE("nydus blob digest is the sha256 of everything written", "[nydus_blob]") {
  for (unsigned threads : {1u, 2u}) {
    StringSink sink;
    BlobWriter writer(sink, options_for(rf::Compressor::zstd, threads));
    for (const auto& f : sample_files()) {
      MemorySource source(f);
      writer.add_file(source, f.size());
    }
    writer.close_data();
    CHECK_THROWS_AS(writer.digest(), ConvertError);
    writer.finish(bootstrap_bytes());
    CHECK(writer.digest() == Sha256::of(sink.data));
  }
}

// A sink that fails once it has taken `limit` bytes.
class FailingSink : public ByteSink {
 public:
  explicit FailingSink(size_t limit) : limit_(limit) {}
  void write(const void*, size_t size) override {
    if (size > limit_) throw ConvertError("disk full");
    limit_ -= size;
  }

 private:
  size_t limit_;
};

TEST_CASE("nydus blob writer passes on the sink's error", "[nydus_blob]") {
  for (unsigned threads : {1u, 2u}) {
    FailingSink sink(100000);
    BlobWriter writer(sink, options_for(rf::Compressor::none, threads));
    auto write_all = [&] {
      for (int i = 0; i < 200; ++i) {
        std::string f = text_bytes(3 * kChunk, 50 + i);
        MemorySource source(f);
        writer.add_file(source, f.size());
      }
      writer.close_data();
      writer.finish("");
    };
    CHECK_THROWS_WITH(write_all(), Catch::Contains("disk full"));
  }
}

TEST_CASE("nydus blob with no file data has only image.boot and the TOC", "[nydus_blob]") {
  std::string bootstrap = random_bytes(4096, 7);  // incompressible: stored raw
  Built b = build({"", ""}, options_for(rf::Compressor::zstd), bootstrap);
  CHECK(b.info.chunk_count == 0);
  CHECK(b.info.ci_offset == 0);
  CHECK(b.info.ci_compressed_size == 0);
  CHECK(b.info.uncompressed_size == 0);
  CHECK(b.info.compressed_size == 0);
  CHECK(b.blob.size() == 4096 + 512 + 128 + 512);
  auto regions = walk_back(b.blob);
  REQUIRE(regions.size() == 2);
  CHECK(regions[1].name == "image.boot");
  auto toc = toc_of(b.blob);
  REQUIRE(toc.size() == 1);
  CHECK(toc[0].flags == 0x1);
  CHECK(extract_toc_entry(toc[0], stored(b.blob, toc[0])) == bootstrap);
  CHECK(b.chunks[0].empty());
}

TEST_CASE("nydus blob tar headers for Go's archive/tar", "[nydus_blob]") {
  Built b = build({"abc"}, options_for(rf::Compressor::none), "");
  // image.blob: 3 chunk bytes; header right after them.
  std::string_view h(b.blob.data() + 3, 512);
  CHECK(h.substr(0, 11) == std::string_view("image.blob\0", 11));
  CHECK(h.substr(124, 12) == std::string_view("00000000003\0", 12));
  CHECK(h.substr(257, 8) == std::string_view("ustar  \0", 8));
  CHECK(h[155] == '\0');
  // An empty bootstrap is an empty image.boot entry.
  auto toc = toc_of(b.blob);
  const TocEntry* boot = find_toc_entry(toc, "image.boot");
  REQUIRE(boot);
  CHECK(boot->compressed_size == 0);
  CHECK(extract_toc_entry(*boot, "").empty());
}

TEST_CASE("nydus blob writer rejects bad input", "[nydus_blob]") {
  StringSink sink;
  SECTION("short file content") {
    BlobWriter writer(sink, options_for(rf::Compressor::zstd));
    MemorySource source("0123456789");
    CHECK_THROWS_WITH(writer.add_file(source, 20), Catch::Contains("ends after 10 of 20 bytes"));
  }
  SECTION("chunk size") {
    CHECK_THROWS_AS(BlobWriter(sink, options_for(rf::Compressor::zstd, 1, 5000)), ConvertError);
    CHECK_THROWS_AS(BlobWriter(sink, options_for(rf::Compressor::zstd, 1, 32 << 20)), ConvertError);
  }
  SECTION("compressor") { CHECK_THROWS_AS(BlobWriter(sink, options_for(rf::Compressor::gzip)), ConvertError); }
}

TEST_CASE("nydus blob readers reject corrupted blobs", "[nydus_blob]") {
  auto files = sample_files();
  std::string bootstrap = bootstrap_bytes();
  Built b = build(files, options_for(rf::Compressor::none), bootstrap);
  const std::string& blob = b.blob;
  uint64_t tail_size = toc_tail_size(blob.size());
  std::string tail = blob.substr(blob.size() - tail_size);

  SECTION("TOC tail size") {
    CHECK(toc_tail_size(100000) == 4096);
    CHECK(toc_tail_size(1000) == 896);
    CHECK(toc_tail_size(127) == 0);
  }
  SECTION("TOC header checksum") {
    tail[tail.size() - 512 + 100] = '7';  // mode field
    CHECK_THROWS_WITH(parse_toc(tail, blob.size()), Catch::Contains("checksum"));
  }
  SECTION("TOC header magic") {
    tail[tail.size() - 512 + 257] = 'X';
    CHECK_THROWS_WITH(parse_toc(tail, blob.size()), Catch::Contains("GNU"));
  }
  SECTION("TOC header name") {
    // A tail that ends with the image.boot header instead (an old blob without a TOC).
    size_t boot_end = blob.size() - 512 - 5 * 128;
    CHECK_THROWS_WITH(parse_toc(std::string_view(blob).substr(boot_end - 4096, 4096), blob.size()),
                      Catch::Contains("named \"image.boot\", not rafs.blob.toc"));
  }
  SECTION("TOC too short") {
    CHECK_THROWS_AS(parse_toc(std::string_view(tail).substr(0, 100), blob.size()), ConvertError);
  }
  SECTION("TOC entry outside the blob") {
    CHECK_THROWS_WITH(parse_toc(tail, blob.size() / 2), Catch::Contains("outside the blob"));
  }
  SECTION("TOC entry flags") {
    tail[tail.size() - 512 - 128] = 0x3;  // image.boot: none|zstd
    CHECK_THROWS_WITH(parse_toc(tail, blob.size()), Catch::Contains("entry 4 (image.boot): unknown flags"));
  }
  SECTION("TOC entry content") {
    auto toc = toc_of(blob);
    const TocEntry* boot = find_toc_entry(toc, "image.boot");
    std::string data(stored(blob, *boot));
    data[10] ^= 1;
    CHECK_THROWS_AS(extract_toc_entry(*boot, data), ConvertError);
    CHECK_THROWS_WITH(extract_toc_entry(*boot, data.substr(1)), Catch::Contains("image.boot"));
    const TocEntry* digests = find_toc_entry(toc, "blob.digest");
    std::string d(stored(blob, *digests));
    d[0] ^= 1;
    CHECK_THROWS_WITH(extract_toc_entry(*digests, d), Catch::Contains("blob.digest: sha256 mismatch"));
    CHECK(find_toc_entry(toc, "blob.chunk") == nullptr);
  }

  std::string region(meta_region(blob, b.info));
  REQUIRE(b.info.ci_compressor == rf::Compressor::none);
  SECTION("meta header magic") {
    region[region.size() - 4] ^= 1;
    CHECK_THROWS_WITH(parse_blob_meta(region, b.info), Catch::Contains("magic"));
  }
  SECTION("truncated meta") {
    CHECK_THROWS_WITH(parse_blob_meta(std::string_view(region).substr(0, region.size() - 1), b.info),
                      Catch::Contains("region is"));
  }
  SECTION("meta header disagrees with the table") {
    rf::BlobInfo other = b.info;
    other.ci_offset += 1;
    CHECK_THROWS_WITH(parse_blob_meta(region, other), Catch::Contains("offset"));
    other = b.info;
    other.chunk_count += 1;
    CHECK_THROWS_AS(parse_blob_meta(region, other), ConvertError);
    other = b.info;
    other.features &= ~rf::blob_feature::inlined_fs_meta;  // as in a merged bootstrap: accepted
    CHECK(parse_blob_meta(region, other).size() == b.info.chunk_count);
    other.features &= ~rf::blob_feature::has_toc;
    CHECK_THROWS_WITH(parse_blob_meta(region, other), Catch::Contains("features"));
  }
  SECTION("chunk past the data") {
    // Last chunk's compressed offset moved to the end of the chunk data.
    size_t last = (b.info.chunk_count - 1) * 16;
    uint64_t data_end = b.info.ci_offset - 512;
    for (int i = 0; i < 5; ++i) region[last + 8 + i] = static_cast<char>(data_end >> (8 * i));
    CHECK_THROWS_WITH(parse_blob_meta(region, b.info), Catch::Contains("chunk 8: compressed data past the end"));
  }
  SECTION("chunks out of order") {
    std::swap_ranges(region.begin(), region.begin() + 16, region.begin() + 16);
    CHECK_THROWS_WITH(parse_blob_meta(region, b.info), Catch::Contains("chunk 1: uncompressed offsets not increasing"));
  }
  SECTION("uncompressed end") {
    rf::BlobInfo other = b.info;
    other.uncompressed_size -= 4096;
    CHECK_THROWS_WITH(parse_blob_meta(region, other), Catch::Contains("uncompressed end"));
  }
  SECTION("chunk data") {
    const auto& r = b.chunks[2][0];
    std::string_view data = std::string_view(blob).substr(r.compressed_offset, r.compressed_size);
    CHECK_THROWS_WITH(decompress_chunk(rf::Compressor::none, data.substr(1), r.uncompressed_size),
                      Catch::Contains("does not decompress to 4096 bytes"));
    CHECK_THROWS_AS(decompress_chunk(rf::Compressor::zstd, data.substr(1), r.uncompressed_size), ConvertError);
    CHECK_THROWS_AS(decompress_chunk(rf::Compressor::lz4_block, data.substr(1), r.uncompressed_size), ConvertError);
    CHECK_THROWS_AS(decompress_chunk(rf::Compressor::zstd, data, 0), ConvertError);
  }
}

TEST_CASE("nydus blob compressed chunks and ci reject corruption", "[nydus_blob]") {
  auto files = sample_files();
  for (auto c : {rf::Compressor::zstd, rf::Compressor::lz4_block}) {
    Built b = build(files, options_for(c), bootstrap_bytes());
    const auto& r = b.chunks[2][0];
    REQUIRE(r.compressed);
    std::string data = b.blob.substr(r.compressed_offset, r.compressed_size);
    CHECK_THROWS_WITH(decompress_chunk(c, data, r.uncompressed_size + 1), Catch::Contains("decompress"));
    CHECK_THROWS_WITH(decompress_chunk(c, data, r.uncompressed_size - 1), Catch::Contains("decompress"));
    CHECK_THROWS_AS(decompress_chunk(c, data.substr(0, data.size() - 2), r.uncompressed_size), ConvertError);
    CHECK(decompress_chunk(c, data, r.uncompressed_size) == files[2].substr(0, kChunk));
  }
}

TEST_CASE("nydus blob readers survive random corruption", "[nydus_blob]") {
  for (auto c : {rf::Compressor::zstd, rf::Compressor::lz4_block, rf::Compressor::none}) {
    Built b = build(sample_files(), options_for(c), bootstrap_bytes());
    std::string tail = b.blob.substr(b.blob.size() - toc_tail_size(b.blob.size()));
    std::string region(meta_region(b.blob, b.info));
    std::mt19937_64 rng(42);
    for (int i = 0; i < 2000; ++i) {
      std::string t = tail, m = region;
      for (int k = 0; k < 3; ++k) {
        t[rng() % t.size()] = static_cast<char>(rng());
        m[rng() % m.size()] = static_cast<char>(rng());
      }
      try {
        auto toc = parse_toc(t, b.blob.size());
        for (const auto& e : toc) {
          if (e.compressed_size > (1 << 20)) continue;
          (void)extract_toc_entry(e, std::string_view(b.blob).substr(e.compressed_offset, e.compressed_size));
        }
      } catch (const ConvertError&) {
      }
      try {
        auto infos = parse_blob_meta(m, b.info);
        for (const auto& ci : infos)
          (void)decompress_chunk(c, std::string_view(b.blob).substr(ci.compressed_offset, ci.compressed_size),
                                 ci.uncompressed_size);
      } catch (const ConvertError&) {
      }
    }
  }
}
