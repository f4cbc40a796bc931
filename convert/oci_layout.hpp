// An OCI image layout directory (image-spec layout.md): `oci-layout`, `index.json`, and blobs
// under `blobs/sha256/`. Tags are the `org.opencontainers.image.ref.name` annotation of the
// entries in index.json. Serves as a source and a target of conversions.
#pragma once

#include <string>

#include "convert/image.hpp"

namespace accel::convert {

class OciLayout : public ImageSource, public ImageTarget {
 public:
  // Opens `dir`; with `create`, makes it (and `oci-layout`, an empty index) when missing.
  OciLayout(std::string dir, bool create);

  ManifestBytes get_manifest(const std::string& reference) override;
  std::unique_ptr<ByteSource> open_blob(const Descriptor& blob) override;
  std::unique_ptr<ByteSource> open_blob_at(const Descriptor& blob, uint64_t offset) override;
  std::unique_ptr<ByteSource> read_blob(const Descriptor& blob, uint64_t offset) override {
    return open_blob_at(blob, offset);
  }
  bool has_blob(const std::string& digest) override;
  void put_blob(const Descriptor& blob, const std::string& path) override;
  void put_manifest(const ManifestBytes& manifest, const std::string& tag) override;

  std::string blob_path(const std::string& digest) const;

 private:
  nlohmann::json read_index() const;
  void write_index(const nlohmann::json& index);
  std::string dir_;
};

}  // namespace accel::convert
