#include "proxy/referrers.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace accel {

namespace {

// A string member of an untrusted JSON object, or "" (a wrong type is not an error here).
std::string string_field(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return {};
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

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

std::optional<std::string> referrer_descriptor(std::string_view manifest_json, std::string_view media_type,
                                               std::string_view digest) {
  auto doc = nlohmann::json::parse(manifest_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
  nlohmann::json d = {{"mediaType", media_type}, {"digest", digest}, {"size", manifest_json.size()}};
  if (auto a = doc.find("artifactType"); a != doc.end() && a->is_string() && !a->get_ref<const std::string&>().empty())
    d["artifactType"] = *a;
  else if (auto c = doc.find("config"); c != doc.end() && c->is_object() && c->contains("mediaType") && (*c)["mediaType"].is_string())
    d["artifactType"] = (*c)["mediaType"];
  if (auto a = doc.find("annotations"); a != doc.end() && a->is_object() && !a->empty()) d["annotations"] = *a;
  return d.dump();
}

std::optional<std::string> append_referrer(std::string_view index_json, std::string_view descriptor_json) {
  auto doc = nlohmann::json::parse(index_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("manifests") || !doc["manifests"].is_array())
    doc = nlohmann::json::parse(empty_referrers_index());
  auto desc = nlohmann::json::parse(descriptor_json);
  for (const auto& d : doc["manifests"])
    if (string_field(d, "digest") == string_field(desc, "digest")) return std::nullopt;
  doc["manifests"].push_back(std::move(desc));
  return doc.dump();
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
    if (artifact_type && string_field(desc, "artifactType") != *artifact_type) continue;
    manifests.push_back(std::move(desc));
  }
  for (auto& d : doc["manifests"]) {
    const bool listed = d.is_object() && std::any_of(manifests.begin(), manifests.end(), [&](const nlohmann::json& ours) {
      return string_field(ours, "digest") == string_field(d, "digest");
    });
    if (!listed) manifests.push_back(std::move(d));
  }
  doc["manifests"] = std::move(manifests);
  return doc.dump();
}

}  // namespace accel
