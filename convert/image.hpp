// The image walk: index -> manifests -> config and layers. It reads an image from an
// ImageSource, hands each layer to a LayerFormat, rewrites the config's diff_ids, the layer
// descriptors and the index, and writes the result to an ImageTarget. Formats never see
// manifests; the walk never sees a format's bytes.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/byte_source.hpp"
#include "convert/layer_format.hpp"

namespace accel::convert {

namespace media_type {
inline constexpr const char* oci_manifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* oci_index = "application/vnd.oci.image.index.v1+json";
inline constexpr const char* oci_config = "application/vnd.oci.image.config.v1+json";
inline constexpr const char* docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr const char* docker_list = "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr const char* docker_config = "application/vnd.docker.container.image.v1+json";
}  // namespace media_type

struct Descriptor {
  std::string media_type;
  std::string digest;
  uint64_t size = 0;
};

struct ManifestBytes {
  std::string media_type;
  std::string bytes;
  std::string digest;  // sha256 of bytes
};

// Where an image is read from (a registry, an OCI layout directory).
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // By tag or digest. Throws ConvertError when missing.
  virtual ManifestBytes get_manifest(const std::string& reference) = 0;
  // The raw blob bytes (the walk checks the digest itself).
  virtual std::unique_ptr<ByteSource> open_blob(const Descriptor& blob) = 0;
  // The blob's bytes from `offset` on (checkers read a format's index at a blob's end). The
  // default reads and drops the bytes before it; stores that can seek override it.
  virtual std::unique_ptr<ByteSource> open_blob_at(const Descriptor& blob, uint64_t offset);
};

// Where an image is written to. Blobs arrive as finished files; manifests last, children first.
class ImageTarget {
 public:
  virtual ~ImageTarget() = default;
  virtual bool has_blob(const std::string& digest) = 0;
  // `path` is a file holding exactly the blob's bytes (already verified against the digest); the
  // target may move it away.
  virtual void put_blob(const Descriptor& blob, const std::string& path) = 0;
  // A blob the image uses that the target already has (converted earlier, or shared with
  // another image): the target may record that this image needs it too.
  virtual void reuse_blob(const Descriptor& blob) {}
  // A blob put or reused for this image, read back from `offset` on (a format's image-level
  // step reads the layers it made). Throws ConvertError where the target cannot.
  virtual std::unique_ptr<ByteSource> read_blob(const Descriptor& blob, uint64_t offset);
  // `tag` is empty for manifests referenced only by digest (children of an index).
  virtual void put_manifest(const ManifestBytes& manifest, const std::string& tag) = 0;
};

struct ImageProgress {
  std::string event;  // "layer-start", "layer-progress", "layer-done", "layer-kept", "manifest-done"
  std::string digest;
  uint64_t bytes_in = 0;   // compressed source bytes read so far for this layer
  uint64_t total_in = 0;   // its size
  size_t layer = 0, layers = 0;
};

// Remembers converted layers across images (a cache), so a layer shared by many images is
// converted once, also when two conversions want it at the same time.
class LayerMemo {
 public:
  virtual ~LayerMemo() = default;
  // Held while one source layer is looked up and converted.
  virtual std::unique_lock<std::mutex> lock(const std::string& source_digest) = 0;
  virtual std::optional<ConvertedLayer> find(const std::string& source_digest) = 0;
  virtual void remember(const std::string& source_digest, const ConvertedLayer& layer) = 0;
};

// Every converted manifest and index names what it is a variant of, so a registry's copy can be
// recognised without the proxy's cache (write-back, a second replica, `accel-proxy check`).
inline constexpr const char* kVariantFormatAnnotation = "io.accel-proxy.variant.format";
inline constexpr const char* kVariantSourceAnnotation = "io.accel-proxy.variant.source";

struct ImageConvertOptions {
  LayerOptions layer;
  // "os/arch[/variant]" entries; empty means every platform of an index.
  std::vector<std::string> platforms;
  std::string work_dir = "/tmp";  // for temporary blob files
  std::function<void(const ImageProgress&)> progress;
  LayerMemo* layer_memo = nullptr;  // optional
  // An image manifest whose layers to convert add up to more compressed bytes than this is
  // refused before any layer is read.
  uint64_t max_image_bytes = uint64_t{64} << 30;
  // Every converted manifest names its source manifest as `subject` (OCI 1.1), so the
  // Referrers API of the source lists it.
  bool subject = true;
};

// One image manifest the walk converted: its source and what it became.
struct ConvertedManifest {
  std::string source_digest;
  Descriptor result;
};

struct ImageConvertResult {
  ManifestBytes manifest;  // the new top-level manifest or index
  // Every image manifest converted, also the children of an index (each names its source as
  // `subject`, so a cache can list it among the source's referrers).
  std::vector<ConvertedManifest> manifests;
  bool already_converted = false;  // every layer was already in the format: nothing changed
  size_t layers_converted = 0, layers_kept = 0, layers_reused = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // compressed source read, new blobs written
};

class ImageConverter {
 public:
  ImageConverter(const LayerFormat& format, ImageConvertOptions options);

  ImageConvertResult convert(ImageSource& source, const std::string& reference, ImageTarget& target,
                             const std::string& target_tag);

 private:
  struct ManifestResult;
  ManifestResult convert_manifest(ImageSource& source, const Descriptor& manifest, const ManifestBytes* fetched,
                                  ImageTarget& target, ImageConvertResult& totals);
  Descriptor convert_layer(ImageSource& source, const nlohmann::json& layer, const std::string& source_diff_id,
                           ImageTarget& target, std::string& new_diff_id, nlohmann::json& annotations,
                           ImageConvertResult& totals, size_t index, size_t count);
  void copy_blob(ImageSource& source, const Descriptor& blob, ImageTarget& target);
  void copy_manifest_tree(ImageSource& source, const ManifestBytes& manifest, ImageTarget& target);
  bool platform_selected(const nlohmann::json& platform) const;

  const LayerFormat& format_;
  ImageConvertOptions options_;
};

// A descriptor of a manifest (digest, size, mediaType), checked; throws ConvertError.
Descriptor descriptor_of(const nlohmann::json& descriptor);
// Checks a manifest body against the size limit and parses it; throws ConvertError.
nlohmann::json parse_manifest(const std::string& bytes);
bool is_index(const std::string& media_type);

}  // namespace accel::convert
