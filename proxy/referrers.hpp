// The Referrers API answer (OCI distribution spec 1.1): an image index of the manifests whose
// `subject` is a given digest, optionally filtered by artifactType. For upstreams without the
// API the proxy reads the fallback tag the spec defines (`<alg>-<hex>`) instead.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace accel {

inline constexpr std::string_view kOciIndexMediaType = "application/vnd.oci.image.index.v1+json";

// "sha256:abc..." -> "sha256-abc...": the referrers tag schema.
std::string referrers_fallback_tag(std::string_view digest);

// An index with no manifests.
std::string empty_referrers_index();

// Keeps the entries of `index_json` whose artifactType equals `artifact_type` (all when unset).
// Returns nullopt when the body is not an image index.
std::optional<std::string> filter_referrers(std::string_view index_json,
                                            const std::optional<std::string>& artifact_type);

// The descriptor the Referrers API lists for a manifest (OCI distribution-spec 1.1): its media
// type, digest and size; `artifactType` as the manifest's own, else its config's media type (an
// index without one gets none); and the manifest's annotations. Nullopt when the bytes are not a
// JSON object.
std::optional<std::string> referrer_descriptor(std::string_view manifest_json, std::string_view media_type,
                                               std::string_view digest);

// A referrers index (the fallback tag's content) with `descriptor_json` appended, or nullopt
// when it lists that digest already. A body that is not an index counts as empty.
std::optional<std::string> append_referrer(std::string_view index_json, std::string_view descriptor_json);

// Adds descriptors (JSON objects with mediaType, digest, size, artifactType, annotations) to
// an index's manifests, before the ones it has, keeping the artifactType filter; an entry the
// index lists already (the upstream holds a written-back variant too) is not repeated. The index
// is returned re-serialised.
std::string add_referrers(std::string_view index_json, const std::vector<std::string>& descriptors_json,
                          const std::optional<std::string>& artifact_type);

}  // namespace accel
