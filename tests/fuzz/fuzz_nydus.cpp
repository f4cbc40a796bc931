// libFuzzer target: the input read as a layer's tar and converted to a Nydus blob (names, link
// names, whiteouts, xattrs, sizes, times all reach the tree builder and the bootstrap writer).
// Malformed input must end in a ConvertError. A conversion that succeeds is checked:
//   - the blob's digest and size are the ones reported;
//   - its per-layer bootstrap is found through the TOC and passes the reader's checks;
//   - merged alone into an image bootstrap, the result is written and read back again;
//   - every chunk address decompresses to the content hashed by the chunk table.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "convert/nydus.hpp"
#include "convert/nydus_blob.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"

using namespace accel::convert;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  NydusFormat format;
  LayerOptions options;
  options.threads = 1 + size % 2;
  options.nydus.chunk_size = 4096;
  options.nydus.compressor = size % 3 == 0 ? "zstd" : size % 3 == 1 ? "lz4_block" : "none";
  options.max_uncompressed_bytes = 1 << 20;  // keeps every run fast (sparse files expand)
  MemorySource input(std::string_view(reinterpret_cast<const char*>(data), size), 1 + size % 1500);
  StringSink out;
  ConvertedLayer layer;
  try {
    layer = format.convert_layer(input, out, options);
  } catch (const ConvertError&) {
    return 0;
  }
  const std::string& blob = out.data;
  if (Sha256::of(blob) != layer.digest || blob.size() != layer.size) __builtin_trap();
  OpenBlobAt open = [&](uint64_t offset) {
    return std::make_unique<MemorySource>(std::string_view(blob).substr(std::min<uint64_t>(offset, blob.size())));
  };
  rafs::Bootstrap own = rafs::read_bootstrap(read_inline_bootstrap(open, blob.size()));  // must not throw
  rafs::Bootstrap merged = merge_layers({own}, {layer.digest.substr(7)});
  rafs::Bootstrap again = rafs::read_bootstrap(rafs::write_bootstrap(merged));
  if (again.blobs.empty()) return 0;
  const auto& info = again.blobs[0];
  auto chunks = nydus::parse_blob_meta(
      std::string_view(blob).substr(info.ci_offset, info.ci_compressed_size + nydus::kBlobMetaHeaderSize), info);
  for (const auto& inode : again.tree.inodes)
    for (const auto& c : inode.chunks) {
      const auto& ci = chunks.at(c.ci_index);
      std::string_view stored = std::string_view(blob).substr(ci.compressed_offset, ci.compressed_size);
      std::string content = ci.compressed() ? nydus::decompress_chunk(info.compressor, stored, ci.uncompressed_size)
                                            : std::string(stored);
      std::string digest = Sha256::of(content);
      if (digest.compare(7, std::string::npos, [&] {
            static const char* hex = "0123456789abcdef";
            std::string h;
            for (uint8_t b : c.digest) h += {hex[b >> 4], hex[b & 15]};
            return h;
          }()) != 0)
        __builtin_trap();
    }
  return 0;
}
