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

// The artifactType under which the proxy lists a variant of a manifest it holds ("estargz" ->
// "application/vnd.accel-proxy.variant.estargz").
std::string variant_artifact_type(std::string_view format);

// Adds descriptors (JSON objects with mediaType, digest, size, artifactType, annotations) to
// an index's manifests, before the ones it has, keeping the artifactType filter; the index is
// returned re-serialised.
std::string add_referrers(std::string_view index_json, const std::vector<std::string>& descriptors_json,
                          const std::optional<std::string>& artifact_type);

}  // namespace accel
