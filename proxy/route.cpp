#include "proxy/route.hpp"

#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>

#include "proxy/oci_names.hpp"

namespace accel {
namespace {

Route invalid(std::string code, int status, std::string message) {
  Route r;
  r.kind = RouteKind::invalid;
  r.error_code = std::move(code);
  r.error_status = status;
  r.error_message = std::move(message);
  return r;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  parts.reserve(8);
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    parts.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

std::string join(const std::vector<std::string_view>& parts, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) {
    if (i != begin) out += '/';
    out += parts[i];
  }
  return out;
}

// Routes under /v2/<name>/...; `parts` are the segments after "v2". Names and references are not
// refused here: a bad one is the upstream's to answer (`well_formed` tells the proxy's features).
Route parse_repository_route(const std::vector<std::string_view>& parts) {
  const size_t n = parts.size();
  Route r;
  size_t name_end = 0;
  if (n >= 3 && parts[n - 2] == "tags" && parts[n - 1] == "list") {
    r.kind = RouteKind::tags;
    name_end = n - 2;
  } else if (n >= 3 && parts[n - 2] == "blobs" && parts[n - 1] == "uploads") {
    r.kind = RouteKind::blob_upload;
    name_end = n - 2;
  } else if (n >= 4 && parts[n - 3] == "blobs" && parts[n - 2] == "uploads") {
    r.kind = RouteKind::blob_upload;
    name_end = n - 3;
  } else if (n >= 3 && parts[n - 2] == "manifests") {
    r.kind = RouteKind::manifest;
    name_end = n - 2;
  } else if (n >= 3 && parts[n - 2] == "blobs") {
    r.kind = RouteKind::blob;
    name_end = n - 2;
  } else if (n >= 3 && parts[n - 2] == "referrers") {
    r.kind = RouteKind::referrers;
    name_end = n - 2;
  } else {
    r.kind = RouteKind::unrecognized;
    return r;
  }
  r.repository = join(parts, 0, name_end);
  r.well_formed = is_valid_repository(r.repository);
  if (r.kind == RouteKind::manifest || r.kind == RouteKind::blob || r.kind == RouteKind::referrers) {
    r.reference = std::string(parts[n - 1]);
    const bool digest = is_valid_digest(r.reference);
    r.well_formed = r.well_formed && (digest || (r.kind == RouteKind::manifest && is_valid_tag(r.reference)));
  }
  return r;
}

}  // namespace

std::string_view route_label(RouteKind kind) {
  switch (kind) {
    case RouteKind::ping: return "ping";
    case RouteKind::catalog: return "catalog";
    case RouteKind::manifest: return "manifest";
    case RouteKind::blob: return "blob";
    case RouteKind::blob_upload: return "blob_upload";
    case RouteKind::tags: return "tags";
    case RouteKind::referrers: return "referrers";
    case RouteKind::healthz: return "healthz";
    case RouteKind::readyz: return "readyz";
    case RouteKind::metrics: return "metrics";
    case RouteKind::token: return "token";
    case RouteKind::webhook_harbor: return "webhook_harbor";
    case RouteKind::webhook_registry: return "webhook_registry";
    case RouteKind::conversions_api: return "conversions_api";
    case RouteKind::prefetch_api: return "prefetch_api";
    case RouteKind::unrecognized: return "unrecognized";
    case RouteKind::not_found: return "not_found";
    case RouteKind::invalid: return "invalid";
  }
  return "unknown";
}

std::optional<std::string> Route::query_value(std::string_view key) const {
  for (const auto& p : query)
    if (p.key == key) return p.value;
  return std::nullopt;
}

bool Route::reference_is_digest() const { return is_valid_digest(reference); }

// Only what is unsafe to forward is refused here: anything that could make the upstream (or a
// path-normalising front before it) read a different resource than the one the proxy parsed.
Route parse_route(std::string_view target) {
  auto parsed = parse_request_target(target);
  if (!parsed) return invalid("NAME_INVALID", 400, "malformed request target");
  const std::string_view path = parsed->path;
  // Registry names never contain '%', '.' segments or empty segments: refusing any
  // percent-encoding up front closes every traversal trick (%2e%2e, %2f) at once.
  if (path.find('%') != std::string_view::npos || path.find('\\') != std::string_view::npos)
    return invalid("NAME_INVALID", 400, "percent-encoded or backslash characters in path");

  Route r;
  if (path == "/v2" || path == "/v2/") {
    r.kind = RouteKind::ping;
  } else if (path == "/v2/_catalog") {
    r.kind = RouteKind::catalog;
  } else if (path == "/healthz") {
    r.kind = RouteKind::healthz;
  } else if (path == "/readyz") {
    r.kind = RouteKind::readyz;
  } else if (path == "/metrics") {
    r.kind = RouteKind::metrics;
  } else if (path == "/hooks/harbor") {
    r.kind = RouteKind::webhook_harbor;
  } else if (path == "/hooks/registry") {
    r.kind = RouteKind::webhook_registry;
  } else if (path == "/api/conversions") {
    r.kind = RouteKind::conversions_api;
  } else if (path == "/api/prefetch" || path.starts_with("/api/prefetch/")) {
    r.kind = RouteKind::prefetch_api;
    r.reference = std::string(path.substr(std::min(path.size(), std::string_view("/api/prefetch/").size())));
  } else if (path.starts_with("/auth/token/")) {
    std::string_view name = path.substr(12);
    if (name.empty() || name.find('/') != std::string_view::npos) return r;
    r.kind = RouteKind::token;
    r.upstream = std::string(name);
  } else if (path.starts_with("/v2/")) {
    std::string_view rest = path.substr(4);
    if (rest.ends_with("/blobs/uploads/")) rest.remove_suffix(1);  // the upload-start URL has one
    auto parts = split_path(rest);
    // "a//b" or "a/." would be cleaned (and redirected) by the upstream's router to another name.
    for (auto part : parts)
      if (part.empty() || part == "." || part == "..")
        return invalid("NAME_INVALID", 400, "empty or dot segment in repository path");
    r = parse_repository_route(parts);
  }
  r.path = std::string(path);
  r.query = std::move(parsed->query);
  return r;
}

std::string upstream_path(const Route& route) {
  switch (route.kind) {
    case RouteKind::ping: return "/v2/";
    case RouteKind::catalog: return "/v2/_catalog";
    case RouteKind::manifest: return "/v2/" + route.repository + "/manifests/" + route.reference;
    case RouteKind::blob: return "/v2/" + route.repository + "/blobs/" + route.reference;
    case RouteKind::tags: return "/v2/" + route.repository + "/tags/list";
    case RouteKind::referrers: return "/v2/" + route.repository + "/referrers/" + route.reference;
    case RouteKind::blob_upload:
    case RouteKind::unrecognized: return route.path;
    default: return "/";
  }
}

std::string upstream_query(const Route& route) {
  std::string out;
  for (const auto& p : route.query) {
    if (p.key == "ns") continue;
    out += out.empty() ? '?' : '&';
    out += boost::urls::encode(p.key, boost::urls::unreserved_chars);
    out += '=';
    out += boost::urls::encode(p.value, boost::urls::unreserved_chars);
  }
  return out;
}

}  // namespace accel
