// eStargz (stargz-snapshotter's seekable tar.gz): a gzip stream of independent members, one per
// file payload or chunk, with a JSON TOC as the last tar entry and a 51-byte footer pointing at
// it. Layout follows stargz-snapshotter/docs/estargz.md; see docs/formats/estargz.md.
#pragma once

#include "convert/layer_format.hpp"

namespace accel::convert {

inline constexpr std::string_view kEstargzTocDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest";
inline constexpr std::string_view kEstargzUncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size";
inline constexpr std::string_view kEstargzTocName = "stargz.index.json";
inline constexpr size_t kEstargzFooterSize = 51;

class EstargzFormat : public LayerFormat {
 public:
  std::string_view name() const override { return "estargz"; }
  bool is_converted(const nlohmann::json& layer_descriptor) const override;
  std::string options_key(const LayerOptions& options) const override {
    return "chunk=" + std::to_string(options.chunk_size) + ",level=" + std::to_string(options.compression_level);
  }
  ConvertedLayer convert_layer(ByteSource& tar, ByteSink& out, const LayerOptions& options) const override;
  std::optional<FileIndex> file_index(const nlohmann::json& layer_descriptor, uint64_t blob_size,
                                      const ReadBlobAt& read) const override;  // estargz_index.cpp
};

// The footer: an empty gzip member whose extra field names the TOC member's offset.
std::string estargz_footer(uint64_t toc_offset);

// A TOC name as readers look it up: no leading "/" or "./", no trailing "/", no "." parts
// (estargz_check.cpp).
std::string normalized_toc_name(std::string_view name);

}  // namespace accel::convert
