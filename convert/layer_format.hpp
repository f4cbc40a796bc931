// The plug-in interface every accelerated format implements. The image walk (image.hpp) owns
// manifests, configs and indexes; a format sees one layer at a time, and, when it needs a view
// of the whole image (Nydus: one bootstrap merged from every layer), an image-level step after
// the last layer that may add a layer of its own (see docs/ARCHITECTURE.md).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/byte_source.hpp"
#include "convert/file_index.hpp"

namespace accel::convert {

struct LayerOptions {
  unsigned threads = 1;            // compression threads; output is the same for any value
  int compression_level = 6;       // format-specific meaning
  uint64_t chunk_size = 4 << 20;   // eStargz: bytes per chunk of a large file
  // Paths loaded first, in this order (prefetch): eStargz places them before its prefetch
  // landmark, Nydus first in each blob and in the bootstrap's prefetch table.
  std::vector<std::string> prioritized_files;
  uint64_t max_uncompressed_bytes = uint64_t{64} << 30;  // a layer expanding past this is refused
  std::string work_dir = "/tmp";  // for spool files (prioritized files)
  struct Nydus {
    uint32_t chunk_size = 1 << 20;    // bytes per chunk of file content (a power of two)
    std::string compressor = "zstd";  // "zstd", "lz4_block" or "none"
    int level = 3;                    // zstd's level
  } nydus;
};

struct ConvertedLayer {
  std::string digest;      // sha256 of the new blob
  uint64_t size = 0;       // bytes of the new blob
  std::string diff_id;     // sha256 of its uncompressed tar
  uint64_t uncompressed_size = 0;
  std::string media_type;
  std::map<std::string, std::string> annotations;
};

// A layer the image-level step adds to the manifest (after the converted layers).
struct AddedLayer {
  ConvertedLayer layer;
  std::string path;             // a file holding exactly the layer's bytes; the walk hands it on
  nlohmann::json history;       // an entry for the config's history (null: none)
};

// Reads back a blob the walk has written for this image (a converted layer), from `offset` on.
class BlobReader {
 public:
  virtual ~BlobReader() = default;
  virtual std::unique_ptr<ByteSource> open(const ConvertedLayer& blob, uint64_t offset) = 0;
};

class LayerFormat {
 public:
  virtual ~LayerFormat() = default;
  // Short name used in CLI flags, tags and cache keys ("estargz").
  virtual std::string_view name() const = 0;
  // True when a layer descriptor shows the layer is already in this format (kept as it is).
  virtual bool is_converted(const nlohmann::json& layer_descriptor) const = 0;
  // The options that change this format's output, as text for cache keys ("chunk=...,level=...");
  // the prefetch list is the caller's to add.
  virtual std::string options_key(const LayerOptions& options) const = 0;
  // Whether a variant in this format is listed before others among its source's referrers:
  // a consumer that looks only at the first referrer (nydus-snapshotter) needs it there.
  virtual bool listed_first_among_referrers() const { return false; }
  // The most layers one image of this format can have (Nydus: 254 blobs per bootstrap).
  virtual size_t max_layers() const { return SIZE_MAX; }
  // Converts one layer. `tar` yields the source layer's uncompressed tar; the new blob goes to
  // `out`. Throws ConvertError on malformed input.
  virtual ConvertedLayer convert_layer(ByteSource& tar, ByteSink& out, const LayerOptions& options) const = 0;

  // The file index of one of this format's layer blobs (file_index.hpp), read through `read`;
  // nullopt when `layer_descriptor` (the layer's manifest entry) is not such a layer. Throws
  // ConvertError on a malformed blob.
  virtual std::optional<FileIndex> file_index(const nlohmann::json& layer_descriptor, uint64_t blob_size,
                                              const ReadBlobAt& read) const {
    return std::nullopt;
  }

  // The image-level step, called once per image manifest after its last layer with every
  // layer in manifest order (converted, reused or kept as it was). Formats whose layers stand
  // alone (eStargz) keep the default: nothing is added.
  virtual std::optional<AddedLayer> finish_image(const std::vector<ConvertedLayer>& layers, BlobReader& blobs,
                                                 const LayerOptions& options) const {
    return std::nullopt;
  }
};

}  // namespace accel::convert
