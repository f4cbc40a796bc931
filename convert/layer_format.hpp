// The plug-in interface every accelerated format implements. The image walk (image.hpp) owns
// manifests, configs and indexes; a format only ever sees one layer at a time (plus, for formats
// that need it, an image-level hook after all layers: see docs/ARCHITECTURE.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/byte_source.hpp"

namespace accel::convert {

struct LayerOptions {
  unsigned threads = 1;            // compression threads; output is the same for any value
  int compression_level = 6;       // format-specific meaning
  uint64_t chunk_size = 4 << 20;   // eStargz: bytes per chunk of a large file
  std::vector<std::string> prioritized_files;  // eStargz: paths to place first (prefetch)
  uint64_t max_uncompressed_bytes = uint64_t{64} << 30;  // a layer expanding past this is refused
  std::string work_dir = "/tmp";  // for spool files (eStargz with prioritized files)
};

struct ConvertedLayer {
  std::string digest;      // sha256 of the new blob
  uint64_t size = 0;       // bytes of the new blob
  std::string diff_id;     // sha256 of its uncompressed tar
  uint64_t uncompressed_size = 0;
  std::string media_type;
  std::map<std::string, std::string> annotations;
};

class LayerFormat {
 public:
  virtual ~LayerFormat() = default;
  // Short name used in CLI flags, tags and cache keys ("estargz").
  virtual std::string_view name() const = 0;
  // True when a layer descriptor shows the layer is already in this format (kept as it is).
  virtual bool is_converted(const nlohmann::json& layer_descriptor) const = 0;
  // Converts one layer. `tar` yields the source layer's uncompressed tar; the new blob goes to
  // `out`. Throws ConvertError on malformed input.
  virtual ConvertedLayer convert_layer(ByteSource& tar, ByteSink& out, const LayerOptions& options) const = 0;
};

}  // namespace accel::convert
