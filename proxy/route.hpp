// Classifies a request target into the registry API route it names, with its repository and
// reference already validated. Plain data in, plain data out: no sockets, easy to test and fuzz.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/request_target.hpp"

namespace accel {

enum class RouteKind {
  ping,        // GET /v2/
  catalog,     // GET /v2/_catalog
  manifest,    // /v2/<name>/manifests/<reference>
  blob,        // /v2/<name>/blobs/<digest>
  blob_upload, // /v2/<name>/blobs/uploads/[<uuid>]
  tags,        // /v2/<name>/tags/list
  referrers,   // /v2/<name>/referrers/<digest>
  healthz,     // GET /healthz
  readyz,      // GET /readyz
  metrics,     // GET /metrics
  token,       // /auth/token/<upstream name>: forwarded to that upstream's token service
  webhook_harbor,    // POST /hooks/harbor
  webhook_registry,  // POST /hooks/registry (distribution notifications)
  conversions_api,   // GET /api/conversions
  not_found,
  invalid,     // a registry route with a bad name, digest or reference: see error_*
};

// A short label for logs and metrics ("manifest", "blob", ...).
std::string_view route_label(RouteKind kind);

struct Route {
  RouteKind kind = RouteKind::not_found;
  std::string repository;   // validated repository name, for per-repository routes
  std::string reference;    // tag or digest (manifest), digest (blob, referrers)
  std::string upstream;     // token route: the upstream name
  std::vector<QueryParam> query;
  // For kind == invalid: the OCI error code, HTTP status and message to answer with.
  std::string error_code;
  int error_status = 0;
  std::string error_message;

  std::optional<std::string> query_value(std::string_view key) const;
  bool reference_is_digest() const;
};

Route parse_route(std::string_view target);

// The canonical upstream path of a registry route, e.g. "/v2/library/app/manifests/1.0".
std::string upstream_path(const Route& route);

// The query string to send upstream: every parameter but `ns` (containerd's mirror hint, for us
// only), re-encoded. Empty or "?a=b&c=d".
std::string upstream_query(const Route& route);

}  // namespace accel
