#include "variants/webhooks.hpp"

#include <nlohmann/json.hpp>
#include <stdexcept>

namespace accel {

namespace {

std::string string_at(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

nlohmann::json parse_json(std::string_view body) {
  auto doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) throw std::invalid_argument("payload is not a JSON object");
  return doc;
}

// Harbor's event data: resources[] with digest/tag/resource_url, repository{repo_full_name}.
std::vector<PushEvent> harbor_events(const nlohmann::json& data) {
  std::vector<PushEvent> out;
  if (!data.is_object()) return out;
  std::string repository;
  if (auto repo = data.find("repository"); repo != data.end() && repo->is_object()) {
    repository = string_at(*repo, "repo_full_name");
    if (repository.empty()) {
      std::string ns = string_at(*repo, "namespace"), name = string_at(*repo, "name");
      repository = ns.empty() ? name : ns + "/" + name;
    }
  }
  auto resources = data.find("resources");
  if (resources == data.end() || !resources->is_array()) return out;
  for (const auto& r : *resources) {
    if (!r.is_object()) continue;
    PushEvent e{repository, string_at(r, "digest"), string_at(r, "tag")};
    if (e.repository.empty()) {
      // resource_url: "harbor.example/library/app:tag" or "...@sha256:..."
      std::string url = string_at(r, "resource_url");
      size_t slash = url.find('/');
      if (slash != std::string::npos) {
        std::string rest = url.substr(slash + 1);
        size_t end = rest.find_first_of("@:");
        e.repository = rest.substr(0, end);
      }
    }
    if (!e.repository.empty() && !e.digest.empty()) out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

std::vector<PushEvent> parse_harbor_webhook(std::string_view body, std::string_view ce_type_header) {
  auto doc = parse_json(body);
  if (!ce_type_header.empty())  // CloudEvents, binary mode: the body is the event data
    return ce_type_header == "harbor.artifact.pushed" ? harbor_events(doc) : std::vector<PushEvent>{};
  if (doc.contains("specversion"))  // CloudEvents, structured mode
    return string_at(doc, "type") == "harbor.artifact.pushed" && doc.contains("data") ? harbor_events(doc["data"])
                                                                                       : std::vector<PushEvent>{};
  if (string_at(doc, "type") != "PUSH_ARTIFACT" || !doc.contains("event_data")) return {};
  return harbor_events(doc["event_data"]);
}

std::vector<PushEvent> parse_registry_notification(std::string_view body) {
  auto doc = parse_json(body);
  std::vector<PushEvent> out;
  auto events = doc.find("events");
  if (events == doc.end() || !events->is_array()) return out;
  for (const auto& e : *events) {
    if (!e.is_object() || string_at(e, "action") != "push") continue;
    auto target = e.find("target");
    if (target == e.end() || !target->is_object()) continue;
    std::string media = string_at(*target, "mediaType");
    bool manifest = media.find("manifest") != std::string::npos || media.find("index") != std::string::npos;
    PushEvent p{string_at(*target, "repository"), string_at(*target, "digest"), string_at(*target, "tag")};
    if (manifest && !p.tag.empty() && !p.repository.empty() && !p.digest.empty()) out.push_back(std::move(p));
  }
  return out;
}

bool repository_matches(std::string_view pattern, std::string_view repo) {
  if (pattern.empty()) return repo.empty();
  if (pattern.starts_with("**")) {
    for (size_t i = 0; i <= repo.size(); ++i)
      if (repository_matches(pattern.substr(2), repo.substr(i))) return true;
    return false;
  }
  if (pattern.front() == '*') {
    for (size_t i = 0; i <= repo.size(); ++i) {
      if (repository_matches(pattern.substr(1), repo.substr(i))) return true;
      if (i < repo.size() && repo[i] == '/') break;
    }
    return false;
  }
  return !repo.empty() && pattern.front() == repo.front() && repository_matches(pattern.substr(1), repo.substr(1));
}

}  // namespace accel
