#include "proxy/referrers.hpp"

#include <nlohmann/json.hpp>

namespace accel {

std::string referrers_fallback_tag(std::string_view digest) {
  std::string tag(digest);
  if (auto colon = tag.find(':'); colon != std::string::npos) tag[colon] = '-';
  return tag;
}

std::string empty_referrers_index() {
  nlohmann::json index = {{"schemaVersion", 2}, {"mediaType", kOciIndexMediaType}, {"manifests", nlohmann::json::array()}};
  return index.dump();
}

std::optional<std::string> filter_referrers(std::string_view index_json,
                                            const std::optional<std::string>& artifact_type) {
  auto doc = nlohmann::json::parse(index_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
  auto manifests = doc.find("manifests");
  if (manifests == doc.end() || !manifests->is_array()) return std::nullopt;
  nlohmann::json kept = nlohmann::json::array();
  for (const auto& d : *manifests) {
    if (!d.is_object()) continue;
    auto type = d.find("artifactType");
    bool matches = !artifact_type || (type != d.end() && type->is_string() && *type == *artifact_type);
    if (!matches) continue;
    kept.push_back(d);
  }
  nlohmann::json out = {{"schemaVersion", 2}, {"mediaType", kOciIndexMediaType}, {"manifests", kept}};
  return out.dump();
}

std::string variant_artifact_type(std::string_view format) {
  return "application/vnd.accel-proxy.variant." + std::string(format);
}

std::string add_referrers(std::string_view index_json, const std::vector<std::string>& descriptors_json,
                          const std::optional<std::string>& artifact_type) {
  auto doc = nlohmann::json::parse(index_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("manifests") || !doc["manifests"].is_array())
    doc = nlohmann::json::parse(empty_referrers_index());
  // Ours go first, in the order given: nydus-snapshotter's referrer detection looks only at
  // the first entry.
  nlohmann::json manifests = nlohmann::json::array();
  for (const auto& d : descriptors_json) {
    auto desc = nlohmann::json::parse(d, nullptr, false);
    if (!desc.is_object()) continue;
    if (artifact_type && desc.value("artifactType", "") != *artifact_type) continue;
    manifests.push_back(std::move(desc));
  }
  for (auto& d : doc["manifests"]) manifests.push_back(std::move(d));
  doc["manifests"] = std::move(manifests);
  return doc.dump();
}

}  // namespace accel
