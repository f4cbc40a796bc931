#include "variants/upstream_variant.hpp"

#include <nlohmann/json.hpp>

#include "convert/sha256.hpp"
#include "proxy/oci_names.hpp"
#include "proxy/referrers.hpp"

namespace accel {

namespace {

using nlohmann::json;

constexpr size_t kMaxCandidates = 8;  // referrers fetched and examined per lookup
// The annotation nydus-snapshotter's converter (acceld, nydusify) puts on a Nydus manifest.
constexpr const char* kNydusSourceAnnotation = "containerd.io/snapshot/nydus-source-digest";

std::string string_at(const json& object, const char* key) {
  if (!object.is_object()) return {};
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string annotation(const json& doc, const char* key) {
  return doc.is_object() && doc.contains("annotations") ? string_at(doc["annotations"], key) : std::string();
}

// The source a variant names: its subject, else one of the source annotations.
std::string named_source(const json& doc) {
  if (doc.contains("subject")) return string_at(doc["subject"], "digest");
  if (auto ours = annotation(doc, convert::kVariantSourceAnnotation); !ours.empty()) return ours;
  return annotation(doc, kNydusSourceAnnotation);
}

bool layers_in_format(const json& doc, const convert::LayerFormat& format) {
  if (!doc.is_object() || !doc.contains("layers") || !doc["layers"].is_array() || doc["layers"].empty()) return false;
  for (const auto& layer : doc["layers"])
    if (!layer.is_object() || !format.is_converted(layer)) return false;
  return true;
}

bool is_attestation(const json& child) {
  return annotation(child, "vnd.docker.reference.type") == "attestation-manifest";
}

// A manifest by digest, checked against it.
convert::ManifestBytes load_checked(RegistryStore& upstream, const std::string& digest) {
  auto manifest = upstream.get_manifest(digest);
  if (convert::Sha256::of(manifest.bytes) != digest)
    throw convert::ConvertError("upstream manifest " + digest + " does not match its digest");
  return manifest;
}

// The digests of an index's entries, the ones annotated with `format` first.
std::vector<std::string> candidates_in(const std::string& index_json, const std::string& format) {
  auto doc = json::parse(index_json, nullptr, false);
  std::vector<std::string> first, rest;
  if (!doc.is_object() || !doc.contains("manifests") || !doc["manifests"].is_array()) return {};
  for (const auto& entry : doc["manifests"]) {
    const std::string digest = string_at(entry, "digest");
    if (!is_valid_digest(digest) || !digest.starts_with("sha256:")) continue;
    const std::string tagged = annotation(entry, convert::kVariantFormatAnnotation);
    if (tagged == format) first.push_back(digest);
    else if (tagged.empty()) rest.push_back(digest);  // someone else's: maybe a variant, maybe a signature
  }
  first.insert(first.end(), rest.begin(), rest.end());
  if (first.size() > kMaxCandidates) first.resize(kMaxCandidates);
  return first;
}

UpstreamVariant with_children(RegistryStore& upstream, convert::ManifestBytes top) {
  UpstreamVariant variant{std::move(top), {}};
  if (!convert::is_index(variant.top.media_type)) return variant;
  auto doc = json::parse(variant.top.bytes);
  for (const auto& child : doc["manifests"]) {
    const std::string digest = string_at(child, "digest");
    if (!is_valid_digest(digest) || is_attestation(child) || convert::is_index(string_at(child, "mediaType"))) continue;
    auto manifest = load_checked(upstream, digest);
    const std::string source = named_source(json::parse(manifest.bytes, nullptr, false));
    if (!source.empty()) variant.children.push_back({source, std::move(manifest)});
  }
  return variant;
}

}  // namespace

bool is_variant_of(const convert::ManifestBytes& manifest, const convert::LayerFormat& format, const std::string& source_digest,
                   const std::function<convert::ManifestBytes(const std::string& digest)>& load) {
  try {
    auto doc = json::parse(manifest.bytes, nullptr, false);
    if (!doc.is_object() || named_source(doc) != source_digest) return false;
    if (!doc.contains("manifests")) return layers_in_format(doc, format);
    if (!doc["manifests"].is_array()) return false;
    for (const auto& child : doc["manifests"]) {
      const std::string digest = string_at(child, "digest");
      if (!is_valid_digest(digest) || is_attestation(child) || convert::is_index(string_at(child, "mediaType"))) continue;
      return layers_in_format(json::parse(load(digest).bytes, nullptr, false), format);
    }
    return false;
  } catch (const json::exception&) {
    return false;  // a field of the wrong type: not a variant we can serve
  }
}

std::optional<UpstreamVariant> find_upstream_variant(RegistryStore& upstream, const convert::LayerFormat& format,
                                                     const std::string& source_digest, const std::string& suffix_tag) {
  auto load = [&](const std::string& digest) { return load_checked(upstream, digest); };
  auto listing = upstream.referrers(source_digest);
  if (!listing) {
    auto fallback = upstream.find_manifest(referrers_fallback_tag(source_digest));
    if (fallback) listing = fallback->bytes;
  }
  if (listing) {
    for (const auto& digest : candidates_in(*listing, std::string(format.name()))) {
      auto manifest = load(digest);
      if (is_variant_of(manifest, format, source_digest, load)) return with_children(upstream, std::move(manifest));
    }
  }
  if (!suffix_tag.empty()) {
    if (auto manifest = upstream.find_manifest(suffix_tag)) {
      if (convert::Sha256::of(manifest->bytes) == manifest->digest && is_variant_of(*manifest, format, source_digest, load))
        return with_children(upstream, std::move(*manifest));
    }
  }
  return std::nullopt;
}

}  // namespace accel
