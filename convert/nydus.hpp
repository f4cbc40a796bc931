// Nydus (RAFS v6, native blobs), the format nydus-snapshotter pulls lazily. Built here from
// scratch; see docs/formats/nydus.md for the layout and what nydusd and the kernel check.
//
// Per layer (convert_layer): the tar's file contents become a Nydus blob (nydus_blob.*), and its
// tree, whiteouts kept as plain files, a per-layer bootstrap (rafs_v6.*) stored inside that blob,
// as nydus-snapshotter's converter does. Per image (finish_image): the per-layer bootstraps are
// read back from the blobs, overlaid lower to upper with the OCI whiteout rules, and written as
// one merged bootstrap in a last tar.gz layer (`image/image.boot`). A layer shared by many
// images is therefore converted once and merged anywhere.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "convert/layer_format.hpp"
#include "convert/rafs_v6.hpp"

namespace accel::convert {

inline constexpr std::string_view kNydusBlobMediaType = "application/vnd.oci.image.layer.nydus.blob.v1";
inline constexpr std::string_view kNydusBlobAnnotation = "containerd.io/snapshot/nydus-blob";
inline constexpr std::string_view kNydusBootstrapAnnotation = "containerd.io/snapshot/nydus-bootstrap";
inline constexpr std::string_view kNydusFsVersionAnnotation = "containerd.io/snapshot/nydus-fs-version";
inline constexpr std::string_view kNydusBootstrapPath = "image/image.boot";

class NydusFormat : public LayerFormat {
 public:
  std::string_view name() const override { return "nydus"; }
  bool is_converted(const nlohmann::json& layer_descriptor) const override;
  size_t max_layers() const override { return 254; }  // EROFS device ids are one byte
  // nydus-snapshotter's referrer detection reads only the first referrer.
  bool listed_first_among_referrers() const override { return true; }
  std::string options_key(const LayerOptions& options) const override {
    return "chunk=" + std::to_string(options.nydus.chunk_size) + ",compressor=" + options.nydus.compressor +
           ",level=" + std::to_string(options.nydus.level);
  }
  ConvertedLayer convert_layer(ByteSource& tar, ByteSink& out, const LayerOptions& options) const override;
  std::optional<AddedLayer> finish_image(const std::vector<ConvertedLayer>& layers, BlobReader& blobs,
                                         const LayerOptions& options) const override;
  std::optional<FileIndex> file_index(const nlohmann::json& layer_descriptor, uint64_t blob_size,
                                      const ReadBlobAt& read) const override;  // nydus_index.cpp
};

// Opens a blob at an offset (a target's or a source's blob, a file).
using OpenBlobAt = std::function<std::unique_ptr<ByteSource>(uint64_t offset)>;

// Reads `length` bytes of a blob from `offset`; throws ConvertError when the blob ends first.
std::string read_blob_range(const OpenBlobAt& open, uint64_t offset, uint64_t length);

// A Nydus blob's per-layer bootstrap (uncompressed), found through the TOC at its end and
// checked against the TOC's digest. Throws ConvertError.
std::string read_inline_bootstrap(const OpenBlobAt& open, uint64_t blob_size);

// Overlays per-layer bootstraps, lowest first (layer i's blob is blob i), with OCI whiteouts
// and opaque directories applied and removed; keeps the blobs some chunk still uses, in layer
// order, with `blob_ids[i]` as layer i's id. The result is ready for write_bootstrap().
rafs::Bootstrap merge_layers(const std::vector<rafs::Bootstrap>& layers, const std::vector<std::string>& blob_ids);

// One nydusd blob-meta cache file per blob, `image/<blob id>.blob.meta`: nydus-snapshotter
// copies them into nydusd's cache, which then need not fetch each blob's meta at start-up.
using BlobMetaFiles = std::vector<std::pair<std::string, std::string>>;  // (blob id, file bytes)

// The bootstrap layer's bytes: a tar (gzip-compressed by the caller) holding `image/`,
// `image/image.boot` and the blob-meta files, with fixed owners and times so the same
// bootstrap gives the same digest.
std::string bootstrap_layer_tar(std::string_view bootstrap, const BlobMetaFiles& blob_metas = {});

}  // namespace accel::convert
