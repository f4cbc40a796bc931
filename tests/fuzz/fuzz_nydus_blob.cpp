// libFuzzer target: the parsers of a Nydus blob's tail. The input is taken as a whole blob: its
// TOC is parsed from the end, every entry extracted, and, when the input starts with a blob
// table entry's worth of numbers, a blob meta region parsed against it. Malformed input must
// end in a ConvertError, never a crash, hang or unbounded allocation.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "convert/byte_source.hpp"
#include "convert/nydus_blob.hpp"

using namespace accel::convert;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view blob(reinterpret_cast<const char*>(data), size);
  try {
    uint64_t tail = nydus::toc_tail_size(size);
    auto toc = nydus::parse_toc(blob.substr(size - tail), size);
    for (const auto& entry : toc) {
      if (entry.compressed_offset > size || entry.compressed_size > size - entry.compressed_offset) __builtin_trap();
      try {
        nydus::extract_toc_entry(entry, blob.substr(entry.compressed_offset, entry.compressed_size));
      } catch (const ConvertError&) {
      }
    }
  } catch (const ConvertError&) {
  }
  // The blob meta parser, with the table entry taken from the input's first 48 bytes.
  if (size >= 48) {
    uint64_t f[6];
    std::memcpy(f, data, sizeof f);
    rafs::BlobInfo info;
    info.chunk_count = static_cast<uint32_t>(f[0] & 0xffff);
    info.compressor = static_cast<rafs::Compressor>(f[0] >> 62);
    info.features = rafs::blob_feature::aligned | static_cast<uint32_t>((f[0] >> 32) & rafs::blob_feature::has_tar_header);
    info.ci_compressor = static_cast<rafs::Compressor>((f[1] >> 62) & 3);
    info.ci_offset = f[1] & 0xfffff;
    info.ci_compressed_size = f[2] & 0xfffff;
    info.ci_uncompressed_size = info.chunk_count * 16;
    info.uncompressed_size = f[3] & 0xffffffff;
    info.compressed_size = f[4] & 0xffffffff;
    try {
      auto chunks = nydus::parse_blob_meta(blob.substr(48), info);
      for (const auto& c : chunks)
        if (c.uncompressed_size == 0) __builtin_trap();
    } catch (const ConvertError&) {
    }
  }
  // Chunk decompression with a declared size.
  if (size >= 4) {
    uint32_t want = (data[0] | data[1] << 8) + 1;
    for (auto c : {rafs::Compressor::zstd, rafs::Compressor::lz4_block, rafs::Compressor::none}) {
      try {
        auto out = nydus::decompress_chunk(c, blob.substr(2), want);
        if (out.size() != want) __builtin_trap();
      } catch (const ConvertError&) {
      }
    }
  }
  return 0;
}
