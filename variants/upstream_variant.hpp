// A variant the upstream holds already: made by another replica of the proxy (write-back), by
// Harbor's acceleration service, by nydusify or by hand. Found before converting, so an image is
// converted once for everyone, not once per proxy.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "convert/image.hpp"
#include "convert/layer_format.hpp"
#include "variants/registry_store.hpp"

namespace accel {

struct UpstreamVariant {
  convert::ManifestBytes top;
  // An index's converted children, each with the source manifest it names (for the cache's
  // per-platform variant records); empty for a single manifest.
  struct Child {
    std::string source_digest;
    convert::ManifestBytes manifest;
  };
  std::vector<Child> children;
};

// Whether `manifest` is a `format` variant of `source_digest`: it names the source (as
// `subject`, or in the proxy's or Nydus's source annotation), and every layer of it (an image
// manifest) or of its first image child (an index; `load` fetches children) is in the format.
// Malformed JSON is simply not a variant.
bool is_variant_of(const convert::ManifestBytes& manifest, const convert::LayerFormat& format, const std::string& source_digest,
                   const std::function<convert::ManifestBytes(const std::string& digest)>& load);

// Looks for a variant of `source_digest` in the upstream repository: among the referrers of the
// source (the Referrers API, else the fallback tag), then under `suffix_tag` when one is given.
// At most a few candidates are fetched. Throws ConvertError only when the registry fails.
std::optional<UpstreamVariant> find_upstream_variant(RegistryStore& upstream, const convert::LayerFormat& format,
                                                     const std::string& source_digest, const std::string& suffix_tag);

}  // namespace accel
